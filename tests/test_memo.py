"""The one memo type (:mod:`saas.memo`), the inventory of memos in docs/scaling.md, and the rule
each shared memo's safety rests on."""

from __future__ import annotations

import datetime
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import marshmallow as ma
import pytest
from flask import g

import saas
import tenants
from saas.memo import Memo, memoize, registered
from saas.observability import metrics

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "saas").rglob("*.py"), *(ROOT / "tenants").rglob("*.py")])


# --- the type ------------------------------------------------------------------------------------


def test_bound_and_least_recently_used_eviction():
    memo: Memo[str, int] = Memo("test.bound", maxsize=2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recently used
    memo.put("c", 3)  # evicts "b"
    assert len(memo) == 2 and list(memo) == ["a", "c"]
    assert memo.get("b") is None
    memo.put("a", 10)  # a new value for a kept key evicts nothing
    assert list(memo) == ["c", "a"] and memo.get("a") == 10
    assert memo.stats() == (2, 1, 1, 2)  # hits, misses, evictions, size
    memo.pop("c")
    memo.clear()
    assert len(memo) == 0 and memo.stats().evictions == 1  # forgetting is not evicting


def test_values_may_be_none_and_compute_runs_once_per_key():
    memo: Memo[str, None] = Memo("test.none", maxsize=4)
    calls = []
    for _ in range(3):
        assert memo.get_or_compute("k", lambda: calls.append(1)) is None
    assert calls == [1] and memo.stats()[:2] == (2, 1)
    assert memo.peek("k", "absent") is None and memo.peek("x", "absent") == "absent"
    assert memo.stats()[:2] == (2, 1)  # peek is not counted
    with pytest.raises(ValueError):
        Memo("test.unbounded", maxsize=0)


def test_memoize_keys_on_every_argument_and_clears():
    calls = []

    @memoize("test.decorated", maxsize=8)
    def f(a, b=0):
        calls.append((a, b))
        return [a, b]

    assert f(1) is f(1)
    assert f(1, b=2) == [1, 2] and f(1, 2) == [1, 2]  # keyword and positional: two keys
    assert calls == [(1, 0), (1, 2), (1, 2)]
    f.cache_clear()
    f(1)
    assert calls[-1] == (1, 0) and f.memo.name == "test.decorated" and f.__name__ == "f"


def test_thread_safety_bound_and_exact_counters():
    """Eight threads hammering a memo smaller than their key space (forced thread switches):
    no error, never above the bound, every value the one computed for its key, and every lookup
    counted exactly once."""
    memo: Memo[int, int] = Memo("test.threads", maxsize=50)
    lookups_per_thread, errors = 5_000, []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def work(seed: int) -> None:
        try:
            for i in range(lookups_per_thread):
                key = (i * 7919 + seed * 104729) % 200
                assert memo.get_or_compute(key, lambda key=key: key * key) == key * key
                assert len(memo) <= 50
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    hits, misses, evictions, size = memo.stats()
    assert errors == []
    assert hits + misses == 8 * lookups_per_thread
    # each eviction made room for a key that missed (two racing threads may miss the same key)
    assert size == 50 and 0 < evictions <= misses - size


def test_registry_lists_live_memos_by_name():
    memo = Memo("test.registry", maxsize=1)
    assert memo in registered()["test.registry"]
    del memo
    import gc

    gc.collect()
    assert "test.registry" not in registered()


def test_memo_counts_are_exported_by_metrics(app, client, monkeypatch):
    from saas.services import services
    from tests.helpers import replace_services

    settings = services(app).settings
    replace_services(monkeypatch, app, settings=settings.with_overrides(metrics_token="memo-scrape-token"))
    memo = Memo("test.exported", maxsize=1)
    memo.put("a", 1)
    memo.get("a")
    memo.get("b")
    memo.put("b", 2)  # evicts "a"
    names = list(registered())
    body = client.get("/metrics", headers={"Authorization": "Bearer memo-scrape-token"}).get_data(
        as_text=True
    )
    assert 'saas_memo_hits_total{memo="test.exported"} 1.0' in body
    assert 'saas_memo_misses_total{memo="test.exported"} 1.0' in body
    assert 'saas_memo_evictions_total{memo="test.exported"} 1.0' in body
    assert 'saas_memo_entries{memo="test.exported"} 1.0' in body
    for name in names:  # every memo has its series, zero or not
        assert f'saas_memo_hits_total{{memo="{name}"}}' in body


def test_memo_counts_of_every_worker_reach_the_pod_totals(tmp_path):
    """Under gunicorn (multiprocess mode) each worker publishes its counts while it serves
    requests, so any worker's scrape reports the sum."""
    script = (
        "import sys\n"
        "from saas.memo import Memo\n"
        "from saas.observability import metrics\n"
        "memo = Memo('test.workers', 8)\n"
        "if sys.argv[1] == 'serve':\n"
        "    memo.put('k', 1)\n"
        "    memo.get('k'); memo.get('k')\n"
        "    metrics.observe_request('/x', 'GET', 200, 0.001)  # publishes (first request)\n"
        "else:\n"
        "    sys.stdout.write(metrics.render().decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script, "serve"], env=env, check=True)
    out = subprocess.run(
        [sys.executable, "-c", script, "scrape"], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert 'saas_memo_hits_total{memo="test.workers"} 4.0' in out


# --- the inventory -------------------------------------------------------------------------------

_NAMED = re.compile(r"""\b(?:Memo|memoize)\(\s*["']([a-z_.]+)["']""")
#: what the issue removes: memo mechanisms other than saas.memo
_OTHER_MEMOS = re.compile(
    r"lru_cache|functools\.cache\b|from functools import[^\n]*\bcache\b|@cache\b|cached_property"
)


def _import_everything() -> None:
    for package in (saas, tenants):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):  # ``python -m saas.cli`` runs the CLI
                importlib.import_module(info.name)


def _documented() -> dict[str, str]:
    """docs/scaling.md's memo table: name -> its row."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    section = text.split("## Memos", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_.]+)` \|.*$", section, re.MULTILINE)}


def test_every_memo_is_named_in_the_source_and_documented(app):
    _import_everything()
    from saas.ops.migrations import TenantMigrator

    migrator = TenantMigrator()  # owns the one memo of a command's object (kept alive below)
    in_source = {name for path in SOURCES for name in _NAMED.findall(path.read_text())}
    live = {name for name in registered() if not name.startswith("test.")}
    documented = _documented()
    assert live <= in_source, live - in_source  # every memo is created under a literal name
    assert in_source == live, in_source - live  # and each of them exists once the app is built
    assert set(documented) == in_source, set(documented) ^ in_source
    for name, row in documented.items():
        assert f'`saas_memo_*{{memo="{name}"}}`' in row, name
    assert migrator.head


def test_no_other_memo_mechanism_is_used():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in SOURCES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _OTHER_MEMOS.search(line)
    ]
    assert found == []


# --- the rules the shared memos rest on ------------------------------------------------------------


def _memoised_query_schemas(app) -> list[ma.Schema]:
    """Every schema whose query-string parse ``api.query_args`` may keep: the arguments of
    every view parsed from the query as a QueryArgsSchema, and every pagination schema."""
    from saas.api import QueryArgsSchema

    out: list[ma.Schema] = []
    for view in app.view_functions.values():
        cls = getattr(view, "view_class", None)
        targets = [getattr(cls, m.lower()) for m in (cls.methods or ())] if cls else [view]
        for target in targets:
            doc = getattr(target, "_apidoc", {})
            for argument in doc.get("arguments", {}).get("parameters", []):
                schema = argument["schema"]
                schema = schema() if isinstance(schema, type) else schema
                if argument.get("in") in ("query", "querystring") and isinstance(schema, QueryArgsSchema):
                    out.append(schema)
            pagination = doc.get("pagination")
            if pagination:
                out.append(pagination["parameters"]["schema"]())
    return out


def test_every_memoised_query_schema_loads_from_the_query_string_alone(app):
    """The rule of ``api.query_args``: a kept parse serves every later request with that query
    string, whoever sends it, so the schema's loading must depend on the query string alone.
    ``query_schema_problems`` decides it on every parse it keeps; here: no schema of the app
    is refused (each keeps its speed-up) and there are some to check."""
    from saas.api import query_schema_problems

    schemas = _memoised_query_schemas(app)
    names = {type(s).__name__ for s in schemas}
    assert {"ContactQuerySchema", "PaginationParametersSchema"} <= names
    assert [(type(s).__name__, problems) for s in schemas if (problems := query_schema_problems(s))] == []


class _Clock(ma.validate.Validator):
    def __call__(self, value):
        if datetime.datetime.now().year < 2000:
            raise ma.ValidationError("too early")
        return value


def _impure_schemas():
    from saas.api import QueryArgsSchema

    class OwnValidator(QueryArgsSchema):
        q = ma.fields.String(validate=_Clock())

    class ComputedDefault(QueryArgsSchema):
        since = ma.fields.DateTime(load_default=datetime.datetime.now)

    class OwnHook(QueryArgsSchema):
        q = ma.fields.String()

        @ma.post_load
        def who(self, data, **kwargs):
            return {**data, "caller": str(g.get("principal"))}

    class OwnField(QueryArgsSchema):
        q = ma.fields.Function(deserialize=lambda v: v)

    return [OwnValidator, ComputedDefault, OwnHook, OwnField]


@pytest.mark.parametrize("schema_type", _impure_schemas(), ids=lambda t: t.__name__)
def test_a_query_schema_that_may_read_anything_else_is_never_kept(app, schema_type):
    from saas.api import _SchemaReusingParser, query_schema_problems

    assert query_schema_problems(schema_type())
    parser = _SchemaReusingParser(memoize=True)
    loads = []
    real = schema_type.load

    def counting(self, *args, **kwargs):
        loads.append(1)
        return real(self, *args, **kwargs)

    schema_type.load = counting
    for _ in range(2):
        with app.test_request_context("/x?q=a"):
            parser.parse(schema_type, location="query")
    assert len(loads) == 2 and len(parser._parsed) == 0


def test_a_parse_with_a_validate_function_is_never_kept(app):
    from saas.api import QueryArgsSchema, _SchemaReusingParser

    class Plain(QueryArgsSchema):
        q = ma.fields.String()

    parser = _SchemaReusingParser()
    seen = []
    for _ in range(2):
        with app.test_request_context("/x?q=a"):
            parser.parse(Plain, location="query", validate=lambda args: seen.append(args) or True)
    assert len(seen) == 2 and len(parser._parsed) == 0
    with app.test_request_context("/x?q=a"):
        assert parser.parse(Plain, location="query") == {"q": "a"}
    assert len(parser._parsed) == 1


def test_the_plan_memo_key_holds_every_entitlement_the_plan_reads(app, monkeypatch):
    """The rule of ``limits.plans``: a principal's plan is kept under (tenant, user, client,
    ``requests_per_minute``, ``monthly_api_calls``, ``quota_period``), so building it must read no other
    entitlement (a new one read here must join the key)."""
    import saas.auth.principals as principals
    from saas.limits import Limiter, policies

    class Recording(dict):
        read: set[str] = set()

        def get(self, key, default=None):
            self.read.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

    ent = Recording(requests_per_minute=100, monthly_api_calls=1000, seats=5, features={"sso": True})
    tenant = SimpleNamespace(id=uuid.uuid4())
    monkeypatch.setattr(
        principals, "snapshot_for", lambda *a: SimpleNamespace(tenant=tenant, entitlements=ent)
    )
    limiter = Limiter(SimpleNamespace(), SimpleNamespace(
        ratelimit_policies="", ratelimit_principal_share=0.5, ratelimit_fail_closed=(), secret_key="s"
    ))  # fmt: skip
    for user, client in ((uuid.uuid4(), None), (None, "svc-client")):
        principal = SimpleNamespace(tenant_id=tenant.id, user_id=user, client_id=client)
        plan = limiter._principal_plan(principal)
        assert plan is limiter._principal_plan(principal)  # kept
        assert [c.limit for c in plan.checks] == [100, 50] and plan.quota.limit == 1000
    assert Recording.read == {"requests_per_minute", "monthly_api_calls", "quota_period"}
    assert policies.DEFAULT_TENANT_RPM  # the key's fallback for an absent rate


def test_a_principal_snapshot_is_reused_only_for_the_same_cache_entries(app, monkeypatch):
    """The rule of ``cache.principal_snapshots``: the snapshot kept for (tenant, user, client)
    is reused only while the tenant cache hands out the very same entries (``is``); any new
    entry (a refresh, an invalidation) builds a new one. End to end:
    tests/limits/test_cache.py::test_role_change_and_removal_take_effect_at_once."""
    import saas.auth.principals as principals
    from tests.helpers import replace_services

    tid, uid = uuid.uuid4(), uuid.uuid4()
    tenant = {
        "id": str(tid),
        "slug": "s",
        "name": "S",
        "status": "active",
        "plan": None,
        "schema_name": "t_x",
    }
    entries = {"tenant": tenant, "ent": {"seats": 1}, f"m:{uid.hex}": {"role": "member", "status": "active"}}

    class Cache:
        def get_many(self, tenant_id, names):
            return {name: entries[name] for name in names}, None

    replace_services(monkeypatch, app, cache=Cache())
    snaps = []
    for change in (
        None,
        None,
        {"role": "member", "status": "active"},
        {"role": "viewer", "status": "active"},
    ):
        if change is not None:
            entries[f"m:{uid.hex}"] = change  # a new object: equal first, then another role
        with app.test_request_context("/"):
            snaps.append(principals.snapshot_for(tid, uid))
    assert snaps[0] is snaps[1]
    assert snaps[2] is not snaps[1] and snaps[2] == snaps[1]
    assert snaps[3].role == "viewer"
    assert all(key[0] == tid for key in principals._BUILT if key[1] == uid)


def test_revocation_keys_are_a_function_of_tenant_session_and_client():
    """``auth.revocation_keys``: the same session id in two tenants gives each tenant's keys."""
    from saas.auth import revocation
    from saas.cache.namespace import TenantKeys

    sid = str(uuid.uuid4())
    for _ in range(2):
        for tenant in (uuid.uuid4(), uuid.uuid4()):
            principal = SimpleNamespace(tenant_id=tenant, claims={"sid": sid}, client_id="cli")
            assert revocation.keys_for(principal) == (
                TenantKeys(tenant).revoked_session(sid), TenantKeys(tenant).revoked_client("cli")
            )  # fmt: skip


def test_session_serializer_follows_a_secret_key_rotation(app):
    """``auth.session_serializers`` is keyed by ``SECRET_KEY`` and its fallbacks: a rotation
    builds a new serializer, which still opens cookies signed with the fallback."""
    interface = app.session_interface
    first = interface.get_signing_serializer(app)
    assert interface.get_signing_serializer(app) is first
    cookie = first.dumps({"csrf": "x"})
    old = app.config["SECRET_KEY"]
    try:
        app.config.update(SECRET_KEY="rotated-" + old, SECRET_KEY_FALLBACKS=[old])
        second = interface.get_signing_serializer(app)
        assert second is not first and second.loads(cookie) == {"csrf": "x"}
    finally:
        app.config["SECRET_KEY"] = old
        app.config.pop("SECRET_KEY_FALLBACKS")


def test_ensure_sync_wraps_exactly_what_flask_would(app, monkeypatch):
    """``saas.App.ensure_sync`` reads the coroutine flag itself instead of keeping a memo (the
    memo it replaced grew by two entries per ``MethodView`` request): it must wrap exactly the
    callables Flask's own ``ensure_sync`` wraps."""
    import functools

    from flask import Flask
    from flask.views import MethodView

    async def coroutine():
        return "ok"

    def plain():
        return "ok"

    class View(MethodView):
        def get(self):
            return "ok"

        async def post(self):
            return "ok"

    class CallableObject:
        def __call__(self):
            return "ok"

    view = View()
    candidates = [
        coroutine, plain, view.get, view.post, view.dispatch_request, functools.partial(coroutine),
        functools.partial(plain), CallableObject(), functools.wraps(plain)(lambda: None),
    ]  # fmt: skip
    wrapped: list = []
    monkeypatch.setattr(Flask, "async_to_sync", lambda self, func: wrapped.append(func) or func)
    for func in candidates:
        Flask.ensure_sync(app, func)
    expected, wrapped[:] = list(wrapped), []
    for func in candidates:
        assert app.ensure_sync(func) is func
    assert wrapped == expected and len(expected) == 3


def test_pure_memos_answer_what_the_function_computes():
    """The memos keyed by the whole input of a pure function."""
    from saas.observability import logging as obs_logging

    for key in ("password", "user_id", "Authorization", "route"):
        assert obs_logging._secret_key(key) is (obs_logging.SECRET_KEY_RE.search(key) is not None)
        assert obs_logging._secret_key(key) is (obs_logging.SECRET_KEY_RE.search(key) is not None)
    child = metrics._child(metrics.REQUESTS, ("/memo-test", "GET", "200"))
    assert child is metrics.REQUESTS.labels("/memo-test", "GET", "200")


def test_option_engines_are_keyed_by_the_tenant_schema(engine):
    from saas.db import Database

    database = Database(engine)
    a, b = database._engine_for("t_" + "a" * 32, True), database._engine_for("t_" + "b" * 32, True)
    assert database._engine_for("t_" + "a" * 32, True) is a
    assert a.get_execution_options()["schema_translate_map"] == {"tenant": "t_" + "a" * 32}
    assert b.get_execution_options()["schema_translate_map"] == {"tenant": "t_" + "b" * 32}
