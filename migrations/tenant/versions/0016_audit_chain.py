"""audit events: a hash chain per tenant (tamper evidence), its head and anchor row

Adds ``seq``, ``prev_hash``, ``hash``, ``nonce`` and ``detail_digest`` to ``audit_events`` and
the one-row ``audit_chain`` table (saas.audit, docs/audit.md). The events already in the
schema are chained here, oldest first (``occurred_at``, then ``id``), with the same function
that chains new ones (``saas.audit.event_hash``, format ``saas.audit.v1``), read and written
5,000 at a time; then the columns become NOT NULL, ``seq`` unique, and the chain row is
written with the last event as its head.

The index on ``occurred_at`` becomes one on ``(occurred_at, seq)``: the export's keyset pages,
and still the list's time filters (its prefix).

Runs inside the tenant's transaction like every tenant migration: about 1 s per 20,000 events
(one hash and one UPDATE each), during which that tenant's audited writes wait.

Revision ID: 0016_audit_chain
Revises: 0002
Create Date: 2026-12-03 19:00:00
"""

import secrets

import sqlalchemy as sa
from alembic import op

from saas.audit import GENESIS, detail_digest, event_hash

revision = "0016_audit_chain"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 5000

_events = sa.table(
    "audit_events",
    *(sa.column(name) for name in (
        "id", "occurred_at", "actor_type", "actor_id", "action", "target_type", "target_id", "ip",
        "user_agent", "request_id", "data", "seq", "prev_hash", "hash", "nonce",
    )),
    # unqualified: the environment's SET LOCAL search_path names the tenant's schema
)  # fmt: skip


def _backfill(bind) -> tuple[int, str]:
    """Chain the existing events; returns the head (last seq and hash)."""
    seq, prev, after = 0, GENESIS, None
    e = _events.c
    update = (
        sa.update(_events)
        .where(e.id == sa.bindparam("b_id"))
        .values(
            seq=sa.bindparam("b_seq"),
            prev_hash=sa.bindparam("b_prev"),
            hash=sa.bindparam("b_hash"),
            nonce=sa.bindparam("b_nonce"),
        )
    )
    while True:
        query = sa.select(
            e.id, e.occurred_at, e.actor_type, e.actor_id, e.action, e.target_type, e.target_id, e.ip,
            e.user_agent, e.request_id, sa.cast(e.data, sa.Text).label("data_text"),
        ).order_by(e.occurred_at, e.id).limit(_BATCH)  # fmt: skip
        if after is not None:
            query = query.where(sa.tuple_(e.occurred_at, e.id) > sa.tuple_(*after))
        rows = bind.execute(query).all()
        if not rows:
            return seq, prev
        params = []
        for r in rows:
            seq += 1
            nonce = secrets.token_hex(16)
            digest = event_hash(
                seq=seq, prev_hash=prev, id=r.id, occurred_at=r.occurred_at, actor_type=r.actor_type,
                actor_id=r.actor_id, action=r.action, target_type=r.target_type, target_id=r.target_id,
                request_id=r.request_id, detail=detail_digest(nonce, r.ip, r.user_agent, r.data_text),
            )  # fmt: skip
            params.append({"b_id": r.id, "b_seq": seq, "b_prev": prev, "b_hash": digest, "b_nonce": nonce})
            prev = digest
        bind.execute(update, params)
        after = (rows[-1].occurred_at, rows[-1].id)


def upgrade() -> None:
    # ALTER TABLE unqualified: Alembic's column DDL bypasses schema_translate_map, and the
    # environment's SET LOCAL search_path names the tenant's schema
    for column in (
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.Column("nonce", sa.String(length=32), nullable=True),
        sa.Column("detail_digest", sa.String(length=64), nullable=True),
    ):
        op.add_column("audit_events", column)
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(length=64), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_chain_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain")),
        schema="tenant",
    )
    head_seq, head_hash = _backfill(op.get_bind())
    for column in ("seq", "prev_hash", "hash"):
        op.alter_column("audit_events", column, nullable=False)
    op.create_unique_constraint(op.f("uq_audit_events_seq"), "audit_events", ["seq"])
    op.create_index(
        "ix_audit_events_occurred_at_seq",
        "audit_events",
        ["occurred_at", "seq"],
        unique=False,
        schema="tenant",
    )
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events", schema="tenant")
    chain = sa.table(
        "audit_chain", *(sa.column(n) for n in ("id", "head_seq", "head_hash", "anchor_seq", "anchor_hash"))
    )
    op.get_bind().execute(
        sa.insert(chain).values(
            id=1, head_seq=head_seq, head_hash=head_hash, anchor_seq=0, anchor_hash=GENESIS
        )
    )


def downgrade() -> None:
    op.create_index(
        "ix_audit_events_occurred_at", "audit_events", ["occurred_at"], unique=False, schema="tenant"
    )
    op.drop_index("ix_audit_events_occurred_at_seq", table_name="audit_events", schema="tenant")
    op.drop_constraint(op.f("uq_audit_events_seq"), "audit_events", type_="unique")
    op.drop_table("audit_chain", schema="tenant")
    for column in ("detail_digest", "nonce", "hash", "prev_hash", "seq"):
        op.drop_column("audit_events", column)
