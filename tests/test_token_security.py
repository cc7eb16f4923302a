"""Access-token verification against forged and defective tokens, key rotation, password policy,
no user enumeration, the auth CLI."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from datetime import UTC, datetime

import jwt as pyjwt
import pytest
from click.testing import CliRunner

from saas.auth.keys import KeyStore
from saas.auth.tokens import TokenService
from saas.errors import Unauthorized
from saas.identity.passwords import Passwords, password_problems
from saas.services import services
from tests.helpers import replace_services


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(owner, **changes):
    now = int(time.time())
    claims = {
        "iss": "http://localhost:8000",
        "sub": owner["user"]["id"],
        "aud": "saas-api",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j1",
        "client_id": "saas-api",
        "tid": owner["tenant"]["id"],
        "roles": ["owner"],
        "scope": "api",
        "auth_time": now,
        "amr": ["pwd"],
    }
    claims.update(changes)
    return claims


def _sign(app, claims, **header):
    key = services(app).keys.active
    pem = key.key.as_pem(private=True)
    headers = {"kid": key.kid, "typ": "at+jwt", **header}
    return pyjwt.encode(claims, pem, algorithm=key.alg, headers=headers)


def _status(client, token) -> int:
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return response.status_code


def test_forged_and_defective_tokens_are_refused(api, client, app):
    owner = api.signup("acme")
    other = api.signup("globex")
    good = _sign(app, _claims(owner))
    assert _status(client, good) == 200
    key = services(app).keys.active
    public_pem = key.key.as_pem(private=False)
    header_none = _b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": key.kid}).encode())
    payload = _b64(json.dumps(_claims(owner)).encode())
    alg_none = f"{header_none}.{payload}."
    header_hs = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}).encode())
    sig = hmac.new(public_pem, f"{header_hs}.{payload}".encode(), hashlib.sha256).digest()
    hs256_with_public_key = f"{header_hs}.{payload}.{_b64(sig)}"
    h, p, s = good.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    tampered_claims["roles"] = ["owner", "admin"]
    tampered = f"{h}.{_b64(json.dumps(tampered_claims).encode())}.{s}"
    cases = {
        "alg none": alg_none,
        "HS256 signed with the public key": hs256_with_public_key,
        "expired": _sign(app, _claims(owner, exp=int(time.time()) - 120, iat=int(time.time()) - 900)),
        "not yet valid": _sign(app, _claims(owner, nbf=int(time.time()) + 600)),
        "wrong aud": _sign(app, _claims(owner, aud="another-api")),
        "wrong iss": _sign(app, _claims(owner, iss="https://evil.example")),
        "wrong tenant": _sign(app, _claims(owner, tid=other["tenant"]["id"])),
        "tampered payload": tampered,
        "unknown kid": _sign(app, _claims(owner), kid="no-such-key"),
        "id token as access token": _sign(app, _claims(owner), typ="JWT"),
        "garbage": "abc.def.ghi",
    }
    for name, token in cases.items():
        assert _status(client, token) == 401, name


def test_key_rotation_publishes_old_and_new_until_expiry(tmp_path):
    store = KeyStore(tmp_path / "keys")
    service = TokenService(store, "http://issuer", "aud", 600)
    old_token = service.issue(subject="u", tenant_id="t", roles=[], scope="api", client_id="c").token
    old_kid = store.active.kid
    store.add_key()
    store.reload()
    assert store.active.kid != old_kid
    assert {k["kid"] for k in store.jwks()["keys"]} == {old_kid, store.active.kid}
    new_token = service.issue(subject="u", tenant_id="t", roles=[], scope="api", client_id="c").token
    assert pyjwt.get_unverified_header(new_token)["kid"] == store.active.kid
    assert service.verify(old_token)["sub"] == "u"
    # not retired while tokens signed by it may live
    assert store.retire(max_age := 630) == [] and max_age
    retired = store.retire(630, now=time.time() + 631)
    assert [k.kid for k in retired] == [old_kid]
    assert [k["kid"] for k in store.jwks()["keys"]] == [store.active.kid]
    with pytest.raises(Unauthorized):
        service.verify(old_token)
    # with max_token_age, a superseded key leaves JWKS and verification on its own
    aging = KeyStore(tmp_path / "aging", max_token_age=600)
    aging_service = TokenService(aging, "http://issuer", "aud", 600)
    early = aging_service.issue(subject="u", tenant_id="t", roles=[], scope="api", client_id="c").token
    early_kid = aging.active.kid
    aging.add_key()
    aging.reload()
    assert len(aging.jwks()["keys"]) == 2 and aging_service.verify(early)
    aging.max_token_age = 0
    aging._keys[-1] = aging._keys[-1].__class__(**{**aging._keys[-1].__dict__, "created": time.time() - 5})
    assert [k["kid"] for k in aging.jwks()["keys"]] == [aging.active.kid] != [early_kid]
    with pytest.raises(Unauthorized):
        aging_service.verify(early)
    # a second worker's store notices a rotation by an unknown kid
    other = KeyStore(tmp_path / "keys")
    store.add_key()
    store.reload()
    fresh = service.issue(subject="u", tenant_id="t", roles=[], scope="api", client_id="c").token
    other._loaded_at = 0
    assert TokenService(other, "http://issuer", "aud", 600).verify(fresh)["sub"] == "u"


def test_jwks_verifies_with_pyjwt(api, client, app):
    owner = api.signup("acme")
    token = owner["token"]["access_token"]
    jwks = client.get("/.well-known/jwks.json").get_json()
    kid = pyjwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    key = pyjwt.PyJWK(jwk).key
    claims = pyjwt.decode(
        token, key, algorithms=["RS256", "ES256"], audience="saas-api", issuer="http://localhost:8000"
    )
    assert claims["tid"] == owner["tenant"]["id"] and claims["sid"]


def test_password_policy():
    assert password_problems("short") == ["Must be at least 8 characters."]
    assert password_problems("x" * 257) == ["Must be at most 256 characters."]
    for common in ("password1", "iloveyou", "Qwertyuiop", "aaaaaaaaaaaa"):
        assert password_problems(common), common
    assert password_problems("correct horse battery staple") == []
    assert password_problems("just ten chars", min_length=12) == []
    assert password_problems("eleven char", min_length=12)


def test_signup_refuses_common_password(client):
    r = client.post(
        "/api/v1/signup",
        json={
            "tenant": {"name": "Acme", "slug": "acme"},
            "owner": {"email": "a@acme.test", "password": "password123"},
        },
    )
    assert r.status_code == 422, r.get_json()


def test_password_rehashed_when_parameters_change(api, app, db_session, monkeypatch):
    from sqlalchemy import select

    from saas.identity.models import User
    from tests.conftest import TEST_PASSWORD

    owner = api.signup("acme")
    mine = select(User.password_hash).where(User.email == owner["user"]["email"])
    before = db_session.scalars(mine).one()
    stronger = Passwords(memory_kib=9216, time_cost=1)
    replace_services(monkeypatch, app, passwords=stronger)
    assert api.login("owner@acme.test").status_code == 200
    db_session.expire_all()
    after = db_session.scalars(mine).one()
    assert after != before and "m=9216" in after and stronger.verify(after, TEST_PASSWORD)


def test_no_user_enumeration_on_login(api, client):
    api.signup("acme")
    wrong = api.login("owner@acme.test", password="wrong password here")
    unknown = api.login("nobody@acme.test", password="wrong password here")
    assert wrong.status_code == unknown.status_code == 401
    strip = lambda b: {k: v for k, v in b.items() if k not in ("request_id", "instance")}  # noqa: E731
    assert strip(wrong.get_json()) == strip(unknown.get_json())

    # similar time: both verify one argon2 hash (measured loosely; argon2 dominates)
    def timed(email):
        start = time.perf_counter()
        api.login(email, password="wrong password here")
        return time.perf_counter() - start

    known_t = min(timed("owner@acme.test") for _ in range(3))
    unknown_t = min(timed("nobody@acme.test") for _ in range(3))
    assert unknown_t > known_t * 0.3


def test_locked_account_gets_the_same_answer(api, client, db_session):
    from sqlalchemy import update

    from saas.identity.models import User

    api.signup("acme")
    db_session.execute(update(User).where(User.email == "owner@acme.test").values(status="locked"))
    db_session.flush()
    r = api.login("owner@acme.test")
    assert r.status_code == 401 and r.get_json()["code"] == "invalid_credentials"


def test_failed_login_is_audited(api, client):
    owner = api.signup("acme")
    api.login("owner@acme.test", password="wrong password here")
    events = client.get("/api/v1/audit-events", headers=api.auth(owner)).get_json()
    assert "auth.login_failed" in [e["action"] for e in events]


def test_cli_keys_and_clients(tmp_path, database_url, monkeypatch):
    from saas.cli import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SAAS_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", "cli-test")
    runner = CliRunner()
    listed = runner.invoke(main, ["keys", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    first = json.loads(listed.output)
    assert len(first) == 1 and first[0]["status"] == "active"
    rotated = runner.invoke(main, ["keys", "rotate", "--json"])
    assert rotated.exit_code == 0, rotated.output
    body = json.loads(rotated.output)
    assert body["previous"] == first[0]["kid"] and body["active"] != body["previous"]
    statuses = {k["kid"]: k["status"] for k in body["keys"]}
    assert statuses == {body["active"]: "active", body["previous"]: "verify-only"}
    created = runner.invoke(
        main,
        ["clients", "create", "--name", "Console", "--redirect-uri", "https://console.example/cb", "--json"],
    )
    assert created.exit_code == 0, created.output
    client_id = json.loads(created.output)["client_id"]
    bad = runner.invoke(
        main, ["clients", "create", "--name", "x", "--redirect-uri", "http://evil.example/cb"]
    )
    assert bad.exit_code == 1
    out = runner.invoke(main, ["clients", "list", "--json"])
    assert client_id in [c["client_id"] for c in json.loads(out.output)]
    missing = runner.invoke(main, ["users", "reset-mfa", "nobody@example.test"])
    assert missing.exit_code == 1 and "no user" in missing.output


def test_key_ages_are_read_on_the_service_clock_not_the_file_system(tmp_path, time_machine):
    """A key's creation time is the stamp ``KeyStore.add_key`` writes into its file name with
    the service's clock, not the file's modification time (another clock, and reset by a copy
    or a restore from backup): the publication window of a superseded key and the doctor's age
    check both measure on the clock that issues the tokens."""
    from saas.ops.doctor import check_keys

    made = datetime(2028, 2, 29, 12, 0, 0, 250000, tzinfo=UTC)
    time_machine.move_to(made, tick=False)
    store = KeyStore(tmp_path / "keys", max_token_age=600)
    old_kid = store.active.kid
    time_machine.shift(1)
    store.add_key()
    store.reload()
    for path in (tmp_path / "keys").glob("*.pem"):  # restored a year later, without their times
        os.utime(path, (made.timestamp() + 365 * 86400,) * 2)
    store.reload()
    assert [k.created for k in store.keys] == [made.timestamp(), made.timestamp() + 1]
    assert {k["kid"] for k in store.jwks()["keys"]} == {old_kid, store.active.kid}
    assert check_keys(store).status == "ok"
    time_machine.shift(601)
    assert [k["kid"] for k in store.jwks()["keys"]] == [store.active.kid]
    time_machine.shift(91 * 86400)
    verdict = check_keys(store)
    assert verdict.status == "warn" and "91 days old" in verdict.detail
