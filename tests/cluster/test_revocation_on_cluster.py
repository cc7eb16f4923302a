"""``tests/test_revocation.py`` on the Redis Cluster of ``tests/cluster/conftest.py``."""

from tests.test_revocation import *  # noqa: F403
