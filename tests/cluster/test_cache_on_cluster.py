"""``tests/limits/test_cache.py`` on the Redis Cluster of ``tests/cluster/conftest.py``."""

import time

from sqlalchemy import event

from saas.services import services
from tests.conftest import Api
from tests.limits.test_cache import *  # noqa: F403

# its counting client is a plain redis.Redis on the single server's pool; the cluster's count is below
del test_hot_path_cache_hit_runs_only_the_data_queries  # noqa: F821


def test_hot_path_cache_hit_runs_only_the_data_queries_on_the_cluster(make_app, connection, monkeypatch):
    """A warm authenticated read on a cluster: one SQL statement and one Redis command, the
    limiter's ``EVALSHA`` (whose keys, the tenant's limits, quota and revocation markers, share
    one slot). Counted where every command leaves the process: redis-py's connections."""
    import redis.connection

    app = make_app()
    client = app.test_client()
    api = Api(client)
    h = api.auth(api.signup("hotpath"))
    for i in range(3):
        client.post("/api/v1/contacts", json={"name": f"C{i}"}, headers=h)
    assert client.get("/api/v1/contacts", headers=h).status_code == 200  # warm the cache
    statements: list[str] = []
    sent: list[str] = []
    send = redis.connection.AbstractConnection.send_command

    def counted(self, *args, **kwargs):
        sent.append(str(args[0]))
        return send(self, *args, **kwargs)

    def record(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().split(None, 1)[0].upper() not in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
            statements.append(statement)

    services(app).key_watcher._next_check = time.monotonic() + 60
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", counted)
    event.listen(connection.engine, "before_cursor_execute", record)
    try:
        response = client.get("/api/v1/contacts", headers=h)
    finally:
        event.remove(connection.engine, "before_cursor_execute", record)
        monkeypatch.undo()
    assert response.status_code == 200 and len(response.get_json()) == 3
    assert len(statements) == 1, statements
    assert sent == ["EVALSHA"], sent
