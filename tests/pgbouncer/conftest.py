"""Fixtures of the suite that runs through a real PgBouncer in transaction mode.

``bouncer`` starts Debian's PgBouncer (``pool_mode = transaction``, ``default_pool_size = 5``)
on a free port in front of the run's PostgreSQL; the suite is skipped, with that reason, only
when PgBouncer is not installed. ``engine`` and ``app`` are overridden here so that the
isolation tests collected in this package (``test_isolation_pooled.py``) run through it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from saas import create_app
from saas.db import Database, _guard_search_path, connect_args
from saas.services import services
from tests.pgbouncer import harness

DEFAULT_POOL_SIZE = 5


@pytest.fixture(scope="session")
def bouncer(database_url) -> Iterator[harness.PgBouncer]:
    if harness.pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    server = make_url(database_url)
    with harness.pgbouncer(
        server.host or server.query.get("host") or "127.0.0.1",  # a socket directory works too
        server.port or 5432,
        server.username or "postgres",
        default_pool_size=DEFAULT_POOL_SIZE,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def pooled_url(bouncer, database_url) -> str:
    """The run's database through PgBouncer."""
    return bouncer.url(make_url(database_url).database)


@pytest.fixture(scope="session")
def engine(pooled_url):
    """Overrides the root ``engine``: the tests of this package talk to PostgreSQL through
    PgBouncer, with the connection arguments every engine of the application uses."""
    eng = create_engine(pooled_url, pool_size=5, connect_args=connect_args())
    _guard_search_path(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def app(settings, engine, redis_client):
    """Overrides the root ``app`` (a separate fixture, so it is built on this package's engine)."""
    application = create_app(settings, database=Database(engine), redis=redis_client)
    application.testing = True
    return application


@pytest.fixture(scope="session")
def pooled_settings(settings, pooled_url):
    """The run's settings on the pooled URL; billing on (its reads never call Stripe; the
    API base points nowhere)."""
    return settings.with_overrides(
        database_url=pooled_url,
        stripe_secret_key="sk_test_pooled",
        stripe_webhook_secrets=("whsec_pooled",),
        stripe_prices={
            "STRIPE_PRICE_PRO": "price_pro_month",
            "STRIPE_PRICE_PRO_YEARLY": "price_pro_year",
            "STRIPE_PRICE_ENTERPRISE": "price_ent_month",
        },
        stripe_api_base="http://127.0.0.1:9",
    )


@pytest.fixture(scope="module")
def pooled_apps(pooled_settings, redis_client):
    """Two applications built as production builds them (``create_app`` makes its engine from
    ``DATABASE_URL``, here PgBouncer), committing for real: two processes' worth of client
    connections sharing PgBouncer's server connections."""
    apps = [create_app(pooled_settings, redis=redis_client) for _ in range(2)]
    for application in apps:
        application.testing = True
    yield apps
    for application in apps:
        services(application).database.dispose()
