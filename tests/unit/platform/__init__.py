"""Unit tests of infra/platform (ACLs, the cluster, the broker, the key admin, metrics, the PostgreSQL layout)."""
