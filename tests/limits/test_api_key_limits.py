"""An API key is its own principal for rate limits (docs/auth.md, "API keys"; docs/limits.md):
its own ``api_key`` bucket of the principal share, inside the tenant's; its creator's ``user``
bucket is another one. Through the Flask test client with the limiter on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from saas.cache.namespace import TenantKeys
from saas.limits import gcra
from saas.limits.gcra import Check
from tests.helpers import bearer


def _consume(redis_client, check: Check, n: int) -> None:
    for _ in range(n):
        assert gcra.run(redis_client, [check], None).allowed


def test_each_key_has_its_own_bucket_apart_from_its_creator(lapi, lclient, redis_client):
    signed = lapi.signup("keys-limits")  # free plan: 60/min per tenant, 30/min per principal
    h = lapi.auth(signed)
    tenant_id = uuid.UUID(signed["tenant"]["id"])
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    keys = []
    for name in ("a", "b"):
        r = lclient.post(
            "/api/v1/api-keys",
            json={"name": name, "permissions": ["contacts:read"], "expires_at": expires},
            headers=h,
        )
        assert r.status_code == 201, r.get_json()
        keys.append(r.get_json())
    first = lclient.get("/api/v1/contacts", headers=bearer(keys[0]["key"]))
    assert first.status_code == 200, first.get_json()
    policy = first.headers["RateLimit-Policy"]
    assert '"api_key";q=30;w=60' in policy and '"tenant";q=60;w=60' in policy and '"user"' not in policy
    # key a's bucket used up: key a is refused, key b and the owner's own session are not
    bucket = Check("api_key", TenantKeys(tenant_id).rate("key", uuid.UUID(keys[0]["id"]).hex), 30, 60)
    _consume(redis_client, bucket, 29)
    refused = lclient.get("/api/v1/contacts", headers=bearer(keys[0]["key"]))
    assert refused.status_code == 429 and refused.get_json()["policy"] == "api_key"
    assert lclient.get("/api/v1/contacts", headers=bearer(keys[1]["key"])).status_code == 200
    mine = lclient.get("/api/v1/contacts", headers=h)
    assert mine.status_code == 200 and '"user";q=30;w=60' in mine.headers["RateLimit-Policy"]
