"""``saas users impersonate``: through click's runner and a real ``saas`` process, its token used
on a live server with ``requests`` and verified by PyJWT against the JWKS; refusals are one line
and exit 1, issuing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select, update

from saas.audit import AuditEvent
from saas.cli import Context, main
from saas.db import Database, translate_map
from saas.identity.models import Tenant
from tests.helpers import live_server

ROOT = Path(__file__).resolve().parents[2]


def _run(settings, *args):
    ctx = Context()
    ctx._settings = settings
    try:
        return CliRunner().invoke(main, list(args), obj=ctx, catch_exceptions=False)
    finally:
        ctx.close()


def _started(engine, tenant):
    with Database(engine).transaction() as session:
        return session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.like("impersonation.%"))
            .order_by(AuditEvent.occurred_at),
            execution_options={"schema_translate_map": translate_map(tenant.schema_name)},
        ).all()


def test_cli_token_works_on_a_live_server_with_act_verified_against_jwks(
    committed, cli_settings, settings, engine, redis_client, monkeypatch
):
    monkeypatch.setenv("SAAS_OPERATOR", "op-tester")
    tenant = committed.tenant(members=2)
    email = f"m1@{tenant.slug}.test"
    with live_server(settings, engine, redis_client) as (base, _app, live_settings):
        cli = live_settings.with_overrides(redis_url=cli_settings.redis_url)
        r = _run(cli, "users", "impersonate", email, "--tenant", tenant.slug, "--reason", "ticket 12",
                 "--minutes", "5")  # fmt: skip
        assert r.exit_code == 0, r.output
        token = r.stdout.strip()
        assert "acting as" in r.stderr and "op-tester" in r.stderr

        key = jwt.PyJWKClient(f"{base}/.well-known/jwks.json").get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=["RS256", "ES256"], audience=live_settings.audience,
                            issuer=base)  # fmt: skip
        assert claims["act"] == {"sub": "op-tester"} and claims["exp"] - claims["iat"] == 300

        me = requests.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert me.status_code == 200, me.text
        assert me.json()["user"]["email"] == email
        auth = {"Authorization": f"Bearer {token}"}
        change = {"current_password": "x" * 12, "new_password": "another passphrase"}
        pw = requests.put(f"{base}/api/v1/me/password", timeout=10, headers=auth, json=change)
        assert pw.status_code == 403 and pw.json()["code"] == "impersonation_forbidden"

        events = _started(engine, tenant)
        assert [e.action for e in events] == [
            "impersonation.started",
            "impersonation.used",
            "impersonation.used",
        ]
        assert events[0].actor_type == "operator" and events[0].actor_id == "op-tester"
        assert events[0].data["reason"] == "ticket 12" and events[0].data["minutes"] == 5
        assert {e.data["status"] for e in events[1:]} == {200, 403}
        assert all(e.data["act"] == {"sub": "op-tester"} for e in events[1:])

        # the tenant forbids it: the token dies at its next request, and no new one is issued
        with Database(engine).transaction() as session:
            session.execute(update(Tenant).where(Tenant.id == tenant.id)
                            .values(settings={"allow_impersonation": False}))  # fmt: skip
        from saas.cache import invalidate_tenant

        invalidate_tenant({tenant.id})
        me = requests.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert me.status_code == 401 and me.json()["code"] == "impersonation_disabled"
        r = _run(cli, "users", "impersonate", email, "--tenant", tenant.slug, "--reason", "again")
        _one_line_error(r, "impersonation_disabled")
    assert len([e for e in _started(engine, tenant) if e.action == "impersonation.started"]) == 1


def _one_line_error(result, code):
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {code}"), result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("extra", "code"),
    [(["--minutes", "61"], "validation_error"), (["--reason", " "], "validation_error")],
    ids=["61 minutes", "blank reason"],
)
def test_cli_refuses_out_of_range_and_blank_reason(committed, run_cli, engine, extra, code):
    tenant = committed.tenant(members=1)
    args = [
        "users",
        "impersonate",
        f"m0@{tenant.slug}.test",
        "--tenant",
        tenant.slug,
        "--reason",
        "t1",
        *extra,
    ]
    _one_line_error(run_cli(*args), code)
    assert _started(engine, tenant) == []


def test_cli_refuses_a_non_member(committed, run_cli, engine):
    tenant, other = committed.tenant(members=1), committed.tenant(members=1)
    r = run_cli("users", "impersonate", f"m0@{other.slug}.test", "--tenant", tenant.slug, "--reason", "t1")
    _one_line_error(r, "not_a_member")
    assert _started(engine, tenant) == []


def test_saas_process_prints_json_with_the_operator_option(committed, cli_settings, engine):
    tenant = committed.tenant(members=1)
    env = {
        **os.environ,
        "DATABASE_URL": cli_settings.database_url,
        "REDIS_URL": cli_settings.redis_url,
        "SAAS_ENV": "test",
        "SAAS_VAR_DIR": str(cli_settings.var_dir),
        "SAAS_OPERATOR": "env-operator",
    }
    done = subprocess.run(
        [sys.executable, "-m", "saas.cli", "users", "impersonate", f"m0@{tenant.slug}.test", "--tenant",
         tenant.slug, "--reason", "ticket 9", "--operator", "bob@support", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["act"] == {"sub": "bob@support"} and out["expires_in"] == 15 * 60
    assert out["token_type"] == "Bearer" and out["access_token"].count(".") == 2
    assert "refresh_token" not in out
    events = _started(engine, tenant)
    assert [(e.action, e.actor_id) for e in events] == [("impersonation.started", "bob@support")]
