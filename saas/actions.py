"""The explicit context of one action: the unit of work it writes in, who acts, from where.

A service function that changes state takes an :class:`ActionContext` as its first argument
instead of reaching for the request (``flask.g``, ``flask.request``) or taking a principal here
and an :class:`~saas.audit.Actor` there. The view builds it from the request
(:meth:`ActionContext.from_request`); an operator command or a job builds it with
:meth:`ActionContext.for_operator` or :meth:`ActionContext.for_system`, so the same function runs
the same way with or without an HTTP request. The pattern is Zulip's ``do_*(..., acting_user=)``
(``zerver/actions/``), with the unit of work of Cosmic Python's ``unit_of_work.py`` made explicit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from saas import audit
from saas.audit import SYSTEM, Actor, AuditAction, RequestMeta

if TYPE_CHECKING:
    from saas.auth.context import Principal

__all__ = ["ActionContext"]


@dataclass(frozen=True, slots=True)
class ActionContext:
    """Who does what, where.

    Attributes:
        session: the unit of work the action writes in (committed by its owner: the request's
            ``after_request`` hook, a CLI command's transaction, a job's).
        actor: who acts, as the audit log names them.
        principal: the authenticated API caller whose tenant, role and permissions the action
            checks; None for an operator or the system.
        meta: the request's address, user agent and id; None outside a request.
    """

    session: Session
    actor: Actor
    principal: Principal | None = None
    meta: RequestMeta | None = None

    @classmethod
    def from_request(cls, session: Session | None = None) -> ActionContext:
        """The current request's context: its session (``saas.db.session()`` unless given), its
        authenticated principal (``system`` when there is none) and its metadata."""
        from flask import g

        from saas import db

        principal = g.get("principal")
        return cls(
            session if session is not None else db.session(),
            audit.current_actor(),
            principal,
            RequestMeta.current(),
        )

    @classmethod
    def for_operator(cls, session: Session, actor: Actor) -> ActionContext:
        """An operator's context (a ``saas`` command): ``actor`` is ``Actor("operator", name)``."""
        return cls(session, actor, None, RequestMeta.current())

    @classmethod
    def for_system(cls, session: Session) -> ActionContext:
        """Nobody in particular acts: a job, a Stripe webhook, an expiry."""
        return cls(session, SYSTEM, None, RequestMeta.current())

    def as_actor(self, actor: Actor) -> ActionContext:
        """The same unit of work and request, another actor (an invitee who just joined)."""
        return ActionContext(self.session, actor, self.principal, self.meta)

    def record(
        self,
        action: AuditAction,
        *,
        tenant_id: uuid.UUID | None = None,
        target_type: str | None = None,
        target_id: Any = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Write one audit event as this context's actor (:func:`saas.audit.record`).

        ``tenant_id`` names the tenant's log when the session is not bound to its schema.

        Raises:
            ValueError: ``action`` is not an :class:`~saas.audit.AuditAction`.
        """
        if self.principal is not None and self.principal.act is not None:
            # an operator acting as the user: both actors on the event (RFC 8693 section 4.1)
            data = {**(data or {}), "act": {"sub": self.principal.act}}
        if self.principal is not None and self.principal.api_key_id is not None:
            # the creator acted through an API key (saas.auth.api_keys): which one
            data = {**(data or {}), "api_key": str(self.principal.api_key_id)}
        audit.record(
            self.session,
            action,
            target_type=target_type,
            target_id=target_id,
            data=data,
            actor=self.actor,
            tenant_id=tenant_id,
            meta=self.meta or RequestMeta(),  # never the request's: a context says where it came from
        )
