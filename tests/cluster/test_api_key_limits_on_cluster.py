"""``tests/limits/test_api_key_limits.py`` on the Redis Cluster of ``tests/cluster/conftest.py``."""

from tests.limits.test_api_key_limits import *  # noqa: F403
