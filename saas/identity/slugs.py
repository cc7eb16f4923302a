"""Tenant slugs: DNS labels (RFC 1035 section 2.3.1, lowercase) of 3 to 63 characters, not
reserved. Normalisation lowercases and strips; validation never rewrites other characters."""

from __future__ import annotations

import re

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]$")

RESERVED = frozenset(
    {
        "www", "api", "admin", "administrator", "app", "apps", "auth", "login", "logout", "signup",
        "register", "oauth", "sso", "id", "account", "accounts", "billing", "status", "help",
        "support", "docs", "mail", "email", "smtp", "static", "assets", "cdn", "dashboard", "root",
        "system", "internal", "public", "private", "saas", "tenant", "tenants", "test", "staging",
        "dev", "prod", "console", "security", "webhooks", "metrics", "health", "blog",
    }
)  # fmt: skip


def normalize_slug(raw: str) -> str:
    return raw.strip().lower()


def slug_problems(slug: str) -> list[str]:
    """Why ``slug`` (already normalised) is refused; empty when valid."""
    if not 3 <= len(slug) <= 63:
        return ["Must be 3 to 63 characters long."]
    if not SLUG_RE.fullmatch(slug):
        return ["Use lowercase letters, digits and hyphens; start and end with a letter or digit."]
    if "--" in slug:
        return ["Must not contain two hyphens in a row."]
    if slug in RESERVED:
        return ["This name is reserved."]
    return []
