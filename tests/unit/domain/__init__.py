"""Unit tests of infra/domain (policy, procedures, validation, senders, participants, identity, lookup applications)."""
