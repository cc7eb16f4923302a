"""The verified-token cache of :class:`saas.auth.tokens.TokenService` (issue 5's hot path):
a token seen again skips the signature check, but never outlives its key or its ``exp``."""

from __future__ import annotations

import time

import pytest

from saas.auth import tokens as tokens_module
from saas.auth.keys import KeyStore
from saas.auth.tokens import LEEWAY_SECONDS, TokenService
from saas.errors import Unauthorized


@pytest.fixture()
def service(tmp_path):
    keys = KeyStore(tmp_path / "keys", generate=True, max_token_age=600 + LEEWAY_SECONDS)
    return TokenService(keys, "http://issuer.test", "saas-api", 600)


def _issue(service: TokenService) -> str:
    return service.issue(
        subject="u1", tenant_id="t1", roles=["owner"], scope="api", client_id="saas-api"
    ).token


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = tokens_module.jwt.decode

    def counting(token, *args, **kwargs):
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(tokens_module.jwt, "decode", counting)
    return calls


def test_a_token_is_verified_once_and_its_claims_are_a_fresh_copy(service, decodes):
    token = _issue(service)
    first = service.verify(token)
    first["tid"] = "changed by a caller"
    second = service.verify(token)
    assert second["tid"] == "t1" and second["sub"] == "u1"
    assert decodes == [token]


def test_a_cached_token_still_expires(service, decodes, time_machine):
    token = _issue(service)
    service.verify(token)
    time_machine.move_to(time.time() + 600 + LEEWAY_SECONDS + 5)
    with pytest.raises(Unauthorized, match="expired"):
        service.verify(token)


def test_a_cached_token_fails_once_its_key_is_gone(service, decodes, tmp_path):
    token = _issue(service)
    service.verify(token)
    old = service.keys.active
    service.keys.add_key()
    service.keys.reload()
    service.keys.retire(0, now=time.time() + 1)  # the old key leaves at once
    assert service.keys.active is not old
    with pytest.raises(Unauthorized, match="key is unknown"):
        service.verify(token)


def test_failures_are_not_cached_and_the_cache_is_bounded(service, decodes, monkeypatch):
    token = _issue(service)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            service.verify(forged)
    assert decodes == [forged, forged]
    monkeypatch.setattr(service._verified, "maxsize", 3)
    issued = [_issue(service) for _ in range(5)]
    for t in issued:
        service.verify(t)
    assert list(service._verified) == issued[-3:]
