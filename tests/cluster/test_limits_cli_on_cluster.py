"""``tests/limits/test_limits_cli.py`` on the Redis Cluster of ``tests/cluster/conftest.py``."""

from tests.limits.test_limits_cli import *  # noqa: F403
