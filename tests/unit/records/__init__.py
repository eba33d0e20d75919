"""Unit tests of infra/records (provision records, checkpoints, their verification)."""
