"""``tests/limits/test_signin_throttles.py`` on the Redis Cluster of ``tests/cluster/conftest.py``."""

from tests.limits.test_signin_throttles import *  # noqa: F403
