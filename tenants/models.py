"""Tables of the tenant product, declared in the placeholder schema ``tenant`` (invariant 2).

No foreign key leaves the tenant schema (invariant 4): ``created_by`` holds a user id, not a
constraint to ``saas.users``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from saas.product import TenantBase, utcnow


class Contact(TenantBase):
    __tablename__ = "contacts"
    #: one index per sort order of the list, tie-breaker included (saas.pagination: cursor
    #: pages read the index's range, offset pages its head)
    __table_args__ = (
        Index("ix_contacts_name_id", "name", "id"),
        Index("ix_contacts_email_id", "email", "id"),
        Index("ix_contacts_company_id", "company", "id"),
        Index("ix_contacts_created_at_id", "created_at", "id"),
        Index("ix_contacts_updated_at_id", "updated_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(64))
    company: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}
