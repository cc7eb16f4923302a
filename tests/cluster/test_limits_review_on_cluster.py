"""``tests/limits/test_limits_review.py`` on the Redis Cluster of ``tests/cluster/conftest.py``."""

from tests.limits.test_limits_review import *  # noqa: F403
