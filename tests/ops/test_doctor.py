"""``saas doctor`` verdicts and the ``--since`` parser."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import click
import pytest

from saas.ops import doctor
from saas.ops.cli_ops import parse_since


def test_doctor_reports_each_dependency(run_cli, monkeypatch, cli_settings):
    monkeypatch.setenv("SAAS_ENV", "test")
    monkeypatch.setenv("REDIS_URL", cli_settings.redis_url)  # doctor reads the environment itself
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    r = run_cli("doctor", "--json")
    verdicts = {v["name"]: v for v in json.loads(r.stdout)}
    assert set(verdicts) >= {
        "config",
        "database",
        "redis",
        "stripe",
        "smtp",
        "migrations",
        "outbox",
        "signing keys",
    }
    assert verdicts["database"]["status"] == "ok" and "PostgreSQL" in verdicts["database"]["detail"]
    assert verdicts["redis"]["status"] == "ok"
    assert verdicts["stripe"]["status"] == "skip" and verdicts["smtp"]["status"] == "skip"
    assert verdicts["signing keys"]["status"] == "ok"
    assert r.exit_code == (1 if any(v["status"] == "fail" for v in verdicts.values()) else 0)
    human = run_cli("doctor")
    assert "database" in human.stdout and len(human.stdout.strip().splitlines()) == len(verdicts)


def test_doctor_config_failure_is_one_line():
    verdict, settings = doctor.check_config({"ACCESS_TOKEN_TTL": "-5"})
    assert settings is None and verdict.status == "fail" and verdict.detail.startswith("ACCESS_TOKEN_TTL")


def test_stripe_reachability_against_a_local_server():
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        ok = doctor.check_stripe({"STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_API_BASE": base})
        assert ok.status == "ok" and "401" in ok.detail and "sk_test_x" not in ok.detail
    finally:
        server.shutdown()
    down = doctor.check_stripe({"STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_API_BASE": base}, timeout=0.5)
    assert down.status == "fail"


def test_parse_since():
    now = datetime.now(UTC)
    assert abs((now - parse_since("24h")) - timedelta(hours=24)) < timedelta(seconds=5)
    assert parse_since("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(click.BadParameter):
        parse_since("yesterday")
