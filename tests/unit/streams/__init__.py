"""Unit tests of streams/ (the hub gateway, lookups, registration rules, send coalescing)."""
