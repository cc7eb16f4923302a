"""Fixtures of the limits and cache tests: apps of their own (limits on), sharing the test's
rolled-back connection and Redis database."""

from __future__ import annotations

import pytest

from saas import create_app
from saas.db import Database
from saas.services import services
from tests.conftest import Api


@pytest.fixture()
def make_app(settings, engine, redis_client, connection):
    """``make_app(redis=None, **settings_overrides)`` -> a Flask app with limits enabled."""

    def factory(redis=None, **overrides):
        overrides.setdefault("ratelimit_enabled", True)
        app = create_app(
            settings.with_overrides(**overrides),
            database=Database(engine),
            redis=redis if redis is not None else redis_client,
        )
        app.testing = True
        services(app).database.bind = connection
        return app

    return factory


@pytest.fixture()
def lapp(make_app):
    return make_app()


@pytest.fixture()
def lclient(lapp):
    return lapp.test_client()


@pytest.fixture()
def lapi(lclient) -> Api:
    return Api(lclient)
