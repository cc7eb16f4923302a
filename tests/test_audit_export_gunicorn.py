"""The audit export through gunicorn (2 sync workers) with a real HTTP client reading the
stream (docs/audit.md, "Export"): the body is sent chunked (no ``Content-Length``: nothing is
buffered whole), JSON Lines and CSV carry every event of the tenant oldest first with its
chain, another tenant's events never appear, bad parameters are problems, and the chain the
export shows is the one ``saas audit verify`` checks.

The test commits for real (its own tenants in the run's database) and drops them afterwards.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import sys
import uuid

import requests

from tests.conftest import _redis_url
from tests.helpers import drop_tenant, signup_over_http
from tests.peers import gunicorn_server


def test_export_streams_through_gunicorn(database_url, worker_id_str, redis_client, engine, tmp_path):
    redis_client.flushdb()
    tenants: list[str] = []
    with gunicorn_server(database_url, _redis_url(worker_id_str), tmp_path) as server:
        base = server.base
        try:
            slug, other_slug = f"axg-{uuid.uuid4().hex[:8]}", f"axo-{uuid.uuid4().hex[:8]}"
            signup = signup_over_http(base, slug, f"o@{slug}.test")
            tenants.append(signup["tenant"]["id"])
            other = signup_over_http(base, other_slug, f"o@{other_slug}.test")
            tenants.append(other["tenant"]["id"])
            h = {"Authorization": f"Bearer {signup['token']['access_token']}"}
            for i in range(4):
                r = requests.post(f"{base}/api/v1/contacts", json={"name": f"=c{i}"}, headers=h, timeout=30)
                assert r.status_code == 201, r.text

            with requests.get(f"{base}/api/v1/audit-events/export", params={"format": "jsonl"}, headers=h,
                              stream=True, timeout=30) as r:  # fmt: skip
                assert r.status_code == 200, r.text
                assert r.headers["Content-Type"] == "application/jsonl; charset=utf-8"
                assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
                events = [json.loads(line) for line in r.iter_lines() if line]
            assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
            assert [e["action"] for e in events[2:]] == ["contact.created"] * 4
            assert {e["actor"]["id"] for e in events[2:]} == {signup["user"]["id"]}
            for before, after in itertools.pairwise(events):
                assert after["prev_hash"] == before["hash"]

            r = requests.get(
                f"{base}/api/v1/audit-events/export", params={"format": "csv"}, headers=h, timeout=30
            )
            assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
            rows = list(csv.DictReader(io.StringIO(r.content.decode())))
            assert [row["hash"] for row in rows] == [e["hash"] for e in events]
            assert other["tenant"]["id"] not in r.text and other["user"]["id"] not in r.text

            r = requests.get(
                f"{base}/api/v1/audit-events/export", params={"format": "pdf"}, headers=h, timeout=30
            )
            assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json"
            assert "format" in r.json()["errors"]

            verified = subprocess.run(
                [sys.executable, "-m", "saas.cli", "audit", "verify", slug, "--json"],
                env=server.env, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            report = json.loads(verified.stdout)
            assert report["ok"] is True and report["head_hash"] == events[-1]["hash"]
        finally:
            for tenant_id in tenants:
                drop_tenant(engine, tenant_id)
