"""Unit tests of infra/ops (lag, dlq, inspection rendering, the ops page, time windows)."""
