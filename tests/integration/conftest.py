"""The integration tests' shared fixtures, found by pytest here instead of star imports in each module.

``running_platform`` (one platform per test module), ``bus`` and ``pg`` come from ``platform_fixtures``;
``kafka_cluster`` and ``secured_platform`` (the secured three-node cluster) from ``cluster_fixtures``.
The root ``tests/conftest.py`` provides the broker and PostgreSQL endpoints they start from.
"""

from tests.integration.cluster_fixtures import kafka_cluster, secured_platform  # noqa: F401 - fixtures
from tests.integration.platform_fixtures import bus, pg, running_platform  # noqa: F401 - fixtures
