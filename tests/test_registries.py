"""The registries that replace loose strings: error codes, audit actions, early-commit reasons;
and the explicit action context that writes audit events without reading the request."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, text

from saas import db
from saas.actions import ActionContext
from saas.audit import SYSTEM, Actor, AuditAction, AuditEvent, RequestMeta, record
from saas.db import EarlyCommit, commit_early, schema_name_for
from saas.errors import AppError, Conflict, ErrorCode

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "saas").rglob("*.py"), *(ROOT / "tenants").rglob("*.py")])


def _calls_with_string_keyword(name: str) -> list[str]:
    """``file:line`` of every call passing ``name=`` a string literal (not a registry member)."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if (
                        kw.arg == name
                        and isinstance(kw.value, ast.Constant)
                        and isinstance(kw.value.value, str)
                    ):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_an_unregistered_error_code_fails_at_definition_and_at_raise():
    with pytest.raises(ValueError, match="not_a_registered_code"):

        class Bogus(AppError):
            code = "not_a_registered_code"

    with pytest.raises(ValueError):
        Conflict("nope", code="not_a_registered_code")
    assert Conflict("taken", code=ErrorCode.SLUG_TAKEN).code == "slug_taken"  # compares as its string


def test_every_error_code_in_the_source_is_a_registry_member():
    assert _calls_with_string_keyword("code") == []


def test_tenant_suspended_has_one_meaning():
    """403 for a request on behalf of a suspended tenant; suspending it again is another code."""
    from saas.ops import lifecycle

    source = Path(lifecycle.__file__).read_text()
    assert "ErrorCode.TENANT_ALREADY_SUSPENDED" in source
    assert "code=ErrorCode.TENANT_SUSPENDED" not in source
    assert ErrorCode.TENANT_ALREADY_SUSPENDED != ErrorCode.TENANT_SUSPENDED


def test_audit_record_refuses_an_unregistered_action(db_session):
    with pytest.raises(ValueError, match=r"member\.teleported"):
        record(db_session, "member.teleported", actor=SYSTEM, tenant_id=uuid.uuid4())


def test_action_strings_passed_to_the_audit_writer_are_registry_members():
    """Every ``record(...)``/``.record(...)`` call names its action with an ``AuditAction``."""
    loose = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name != "record":
                continue
            args = [*node.args, *(kw.value for kw in node.keywords if kw.arg == "action")]
            if any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                loose.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert loose == []


def test_record_by_tenant_id_writes_into_that_tenant_only(api, app, db_session):
    """``tenant_id=`` derives the schema from the id (no tenant row is read) and the event lands
    in that tenant's log and no other's; the context's actor and request metadata are written."""
    one, two = api.signup("acme"), api.signup("globex")
    one_id, two_id = uuid.UUID(one["tenant"]["id"]), uuid.UUID(two["tenant"]["id"])
    meta = RequestMeta("203.0.113.9", "ops-script/1.0", "req-42")
    ctx = ActionContext(db_session, Actor("operator", "alice"), None, meta)
    ctx.record(AuditAction.LIMITS_RESET, tenant_id=one_id, target_type="tenant", target_id=one_id)

    def events(tenant_id):
        stmt = select(AuditEvent).where(AuditEvent.action == "limits.reset")
        opts = {"schema_translate_map": db.translate_map(schema_name_for(tenant_id))}
        return db_session.scalars(stmt, execution_options=opts).all()

    (event,) = events(one_id)
    assert (event.actor_type, event.actor_id) == ("operator", "alice")
    assert (event.ip, event.user_agent, event.request_id) == ("203.0.113.9", "ops-script/1.0", "req-42")
    assert events(two_id) == []


def test_an_action_context_outside_a_request_is_the_system_or_the_operator(db_session):
    assert ActionContext.for_system(db_session).actor == SYSTEM
    operator = ActionContext.for_operator(db_session, Actor("operator", "bob"))
    assert operator.actor == Actor("operator", "bob") and operator.principal is None
    assert operator.as_actor(Actor("user", "u1")).actor == Actor("user", "u1")


def test_commit_early_needs_a_declared_reason(db_session):
    with pytest.raises(ValueError):
        commit_early(db_session, "because")  # type: ignore[arg-type]
    assert {r.value for r in EarlyCommit} >= {"stripe_customer_created", "sign_in_failure"}


def test_the_schema_is_derived_from_the_id_alone(db_session, api):
    tenant = api.signup("initech")["tenant"]
    stored = db_session.execute(
        text("SELECT schema_name FROM saas.tenants WHERE id = :id"), {"id": tenant["id"]}
    ).scalar_one()
    assert stored == schema_name_for(uuid.UUID(tenant["id"]))


def test_no_module_commits_but_the_unit_of_work_and_commit_early():
    """The request's unit of work commits once (``saas.db``); the only other commits are
    ``commit_early`` with a declared reason. A savepoint's ``commit()`` (a release) is not one."""
    found, used = [], set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            savepoint = isinstance(owner, ast.Name) and owner.id == "savepoint"
            if node.attr == "commit" and path.relative_to(ROOT).as_posix() != "saas/db.py" and not savepoint:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if name == "EarlyCommit":
                used.add(node.attr)
    assert found == []
    assert used == {reason.name for reason in EarlyCommit}  # every reason is used, none undeclared
