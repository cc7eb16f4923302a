"""``tests/limits/test_limits.py`` on the Redis Cluster of ``tests/cluster/conftest.py``."""

from tests.limits.test_limits import *  # noqa: F403
from tests.limits.test_limits import Check, PublicKeys, gcra


def test_noscript_fallback(redis_client):
    """The script is sent again (``EVAL``) to the node whose cache lost it: a cluster keeps one
    script cache per node."""
    redis_client.flushdb()
    redis_client.script_flush()
    check = Check("p", PublicKeys.rate("p", "y"), limit=1, period=60)
    node = redis_client.get_redis_connection(redis_client.get_node_from_key(check.key))
    assert node.script_exists(gcra.SHA) == [False]
    assert gcra.run(redis_client, [check], None).allowed
    assert node.script_exists(gcra.SHA) == [True]
