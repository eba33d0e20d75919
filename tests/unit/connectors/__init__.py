"""Unit tests of connectors/ (bank channels, HTTP signatures, inquiry batches, the portal)."""
