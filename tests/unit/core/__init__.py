"""Unit tests of infra/core (errors, settings, arguments, clock, retry, logs, tracing)."""
