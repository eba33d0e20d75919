"""Unit tests of schemas/ (the codec, schema compatibility, the bounds on decoding)."""
