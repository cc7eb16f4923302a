"""The limits, cache and revocation suites on a real Redis Cluster.

One cluster per run (per xdist worker): three primaries with one replica each, started by
:func:`tests.redis_servers.cluster` on free ports (``cluster-node-timeout`` 1000 ms) and ended by
PID at the end of the session. The fixtures the re-run modules use (``redis_client``, ``app``
and the limits suite's ``make_app``...) are redefined here on a
:class:`redis.cluster.RedisCluster` client built by the app's own
:func:`saas.redis_client.make_redis`, so every call those tests make goes through the cluster:
a key set of one call that spans two slots fails there with ``CROSSSLOT``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from saas import create_app
from saas.db import Database
from tests import redis_servers
from tests.limits.conftest import lapi, lapp, lclient, make_app  # noqa: F401 - fixtures re-used here


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[redis_servers.Cluster]:
    if not redis_servers.available():
        pytest.skip("redis-server / redis-cli not installed")
    with redis_servers.cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_client(redis_cluster):
    from saas.redis_client import make_redis

    client = make_redis(redis_cluster.url, 2.0)
    client.ping()
    return client


@pytest.fixture(scope="session")
def app(settings, engine, redis_client):
    application = create_app(settings, database=Database(engine), redis=redis_client)
    application.testing = True
    return application
