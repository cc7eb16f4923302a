"""Settings read once from the environment (one clear line naming a bad variable) and the
health endpoints (``/readyz`` 503 when the database or Redis is unreachable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saas import create_app
from saas.db import Database
from saas.redis_client import make_redis
from saas.settings import Settings, SettingsError


def test_defaults_from_an_empty_environment():
    s = Settings.from_env({})
    assert s.env == "production" and s.database_url is None and s.access_token_ttl_seconds == 600
    assert (s.argon2_memory_kib, s.argon2_time_cost, s.argon2_parallelism) == (19 * 1024, 2, 1)
    assert s.signing_alg == "RS256" and s.var_dir == Path("var")


def test_values_are_converted():
    s = Settings.from_env(
        {
            "SAAS_ENV": "Test",
            "DATABASE_URL": "postgres://u:p@db:5432/app",
            "REDIS_URL": "redis://cache:6379/2",
            "ACCESS_TOKEN_TTL": "300",
            "REDIS_TIMEOUT": "0.5",
            "SAAS_SIGNING_ALG": "es256",
            "SAAS_VAR_DIR": "/tmp/x",
            "LOG_LEVEL": "debug",
        }
    )
    assert s.env == "test" and s.database_url == "postgresql://u:p@db:5432/app"
    assert s.access_token_ttl_seconds == 300 and s.redis_timeout_seconds == 0.5
    assert s.signing_alg == "ES256" and s.var_dir == Path("/tmp/x") and s.log_level == "DEBUG"


def test_dns_nameservers_are_addresses_with_ports():
    assert Settings.from_env({}).dns_nameservers == ()  # the system resolver
    s = Settings.from_env({"DNS_NAMESERVERS": "192.0.2.1, 127.0.0.1:5353,[::1]:5300,2001:db8::1"})
    assert s.dns_nameservers == (("192.0.2.1", 53), ("127.0.0.1", 5353), ("::1", 5300), ("2001:db8::1", 53))
    assert Settings.from_env({"DNS_TIMEOUT": "0.5"}).dns_timeout_seconds == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ACCESS_TOKEN_TTL", "ten"),
        ("ACCESS_TOKEN_TTL", "-5"),
        ("REFRESH_TOKEN_TTL", "0"),
        ("DATABASE_URL", "mysql://db/app"),
        ("REDIS_URL", "http://cache"),
        ("SAAS_ISSUER", "not a url"),
        ("SAAS_ENV", "staging"),
        ("SAAS_SIGNING_ALG", "HS256"),
        ("ARGON2_MEMORY_KIB", "1024"),
        ("REDIS_TIMEOUT", "fast"),
        ("LOG_LEVEL", "LOUD"),
        ("DB_POOL_SIZE", "1.5"),
        ("DNS_NAMESERVERS", "ns1.example.com"),
        ("DNS_NAMESERVERS", "127.0.0.1:99999"),
        ("DNS_NAMESERVERS", "[::1"),
        ("DNS_TIMEOUT", "0"),
    ],
)
def test_malformed_variable_names_itself_in_one_line(name, value):
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({"SAAS_ENV": "test", name: value})
    message = str(excinfo.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_secrets_are_not_echoed():
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({"DATABASE_URL": "mysql://user:hunter2@db/app", "SAAS_ENV": "test"})
    assert "DATABASE_URL" in str(excinfo.value)
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({"SAAS_ENV": "test", "SAAS_SIGNING_KEY_PATH": "", "ARGON2_MEMORY_KIB": "x"})
    assert "ARGON2_MEMORY_KIB" in str(excinfo.value)


def test_production_needs_a_secret_key_with_a_database():
    with pytest.raises(SettingsError, match=r"^SECRET_KEY: "):
        Settings.from_env({"DATABASE_URL": "postgresql://db/app"})
    assert Settings.from_env({"DATABASE_URL": "postgresql://db/app", "SECRET_KEY": "s"}).secret_key == "s"


def test_create_app_without_database_url_fails_clearly(settings):
    with pytest.raises(SettingsError, match=r"^DATABASE_URL: "):
        create_app(settings.with_overrides(database_url=None))


def test_create_app_reads_the_environment(monkeypatch, settings, database_url):
    monkeypatch.setenv("SAAS_ENV", "test")
    monkeypatch.setenv("ACCESS_TOKEN_TTL", "oops")
    with pytest.raises(SettingsError, match="ACCESS_TOKEN_TTL"):
        create_app()


# --- health ---------------------------------------------------------------------------------------


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}


def test_readyz_ok(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "ready" and body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert r.headers["Cache-Control"] == "no-store"


def test_readyz_503_when_the_database_is_unreachable(settings, redis_client):
    bad = Database.from_url("postgresql://postgres@127.0.0.1:1/nowhere", pool_size=1, max_overflow=0)
    app = create_app(settings, database=bad, redis=redis_client)
    try:
        r = app.test_client().get("/readyz")
        assert r.status_code == 503
        body = r.get_json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"]["ok"] is False and body["checks"]["redis"]["ok"] is True
        assert "127.0.0.1" not in r.get_data(as_text=True)  # no connection details leak
        assert app.test_client().get("/healthz").status_code == 200  # the process still answers
    finally:
        bad.dispose()


def test_readyz_503_when_redis_is_unreachable(settings, engine):
    bad_redis = make_redis("redis://127.0.0.1:1/0", 0.25)  # how the app builds its client
    app = create_app(settings, database=Database(engine), redis=bad_redis)
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["checks"]["redis"]["ok"] is False and r.get_json()["checks"]["database"]["ok"] is True


def test_database_errors_do_not_carry_bound_values(database_url):
    """Logged database errors never list the bound parameters (hashes, tokens, emails)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DataError

    db = Database.from_url(database_url, pool_size=1, max_overflow=0)
    try:
        with db.engine.connect() as conn, pytest.raises(DataError) as excinfo:
            conn.execute(text("SELECT CAST(:secret AS integer)"), {"secret": "hunter2-secret"})
        message = str(excinfo.value)
        # PostgreSQL may quote an offending value itself; SQLAlchemy adds no parameter dump
        assert "'secret':" not in message and "parameters hidden" in message
    finally:
        db.dispose()


def test_url_credentials_are_not_echoed():
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({"SAAS_ENV": "test", "DATABASE_URL": "postgresq://app:S3cret@db/app"})
    assert "S3cret" not in str(excinfo.value)
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({"SAAS_ENV": "test", "REDIS_URL": "http://:hunter2@cache:6379/0"})
    assert "hunter2" not in str(excinfo.value)
