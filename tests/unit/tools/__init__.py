"""Unit tests of infra/tools (bench figures, chaos invariants, the leak scan, the harness)."""
