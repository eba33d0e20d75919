"""Unit tests of infra/cli (usage errors, config, schema and worker commands, the deploy files against the parser)."""
