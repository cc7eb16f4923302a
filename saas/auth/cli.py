"""Operator commands of the auth service: ``saas keys list|rotate``, ``saas clients list|create``,
``saas users reset-mfa|rehash-recovery-codes``. Added to ``saas`` by :func:`register`."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import click

from saas.auth.tokens import LEEWAY_SECONDS
from saas.cli.helpers import (
    CliError,
    Context,
    emit_rows,
    fail_cleanly,
    find_tenant,
    group_of,
    operator_actor,
    pass_ctx,
    print_json,
    print_table,
)

security_log = logging.getLogger("saas.security")


def _key_store(ctx: Context):
    from saas.auth.keys import KeyStore

    settings = ctx.settings
    path = settings.signing_key_path or settings.var_dir / "keys"
    return KeyStore(
        path,
        settings.signing_alg,
        generate=settings.signing_key_path is None,
        max_token_age=settings.access_token_ttl_seconds + LEEWAY_SECONDS,
    )


def _key_rows(store) -> list[dict]:
    keys = store.keys
    active = keys[-1].kid
    return [
        {
            "kid": k.kid,
            "alg": k.alg,
            "created": datetime.fromtimestamp(k.created, UTC).isoformat(timespec="seconds"),
            "status": "active" if k.kid == active else "verify-only",
            "file": k.path.name if k.path else None,
        }
        for k in keys
    ]


@click.group("keys")
def keys() -> None:
    """Token signing keys: list, rotate."""


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def keys_list(ctx: Context, as_json: bool) -> None:
    """The keys published in JWKS: the active one signs, the others only verify."""
    rows = _key_rows(_key_store(ctx))
    emit_rows(
        rows,
        as_json,
        f"{len(rows)} signing keys",
        {"kid": "kid", "alg": "alg", "created": "created", "status": "status", "file": "file"},
    )


@keys.command("rotate")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def keys_rotate(ctx: Context, as_json: bool) -> None:
    """Add a new active key. The previous keys stay in JWKS until every token they signed has
    expired (access-token lifetime plus leeway after their successor appeared), then move to
    ``retired/``. Workers pick the new key up within 10 seconds."""
    store = _key_store(ctx)
    if store.path.is_file():
        raise CliError("SAAS_SIGNING_KEY_PATH names one file; rotate by pointing it to a directory")
    previous = store.active.kid
    store.add_key()
    store.reload()
    max_age = ctx.settings.access_token_ttl_seconds + LEEWAY_SECONDS
    retired = store.retire(max_age)
    from saas.cache.signing_keys import announce_rotation

    announce_rotation(ctx.settings)  # workers reload within a second, not at their next poll
    security_log.warning(
        "signing key rotated",
        extra={
            "event": "key.rotated",
            "previous_kid": previous,
            "kid": store.active.kid,
            "actor": operator_actor().id,
            "retired": [k.kid for k in retired],
        },
    )
    result = {
        "active": store.active.kid,
        "previous": previous,
        "retired": [k.kid for k in retired],
        "keys": _key_rows(store),
        "at": int(time.time()),
    }
    if as_json:
        print_json(result)
        return
    click.echo(f"new active key {result['active']} (previous {previous} still verifies)")
    for kid in result["retired"]:
        click.echo(f"retired {kid}")


# --- clients -------------------------------------------------------------------------------------


@click.group("clients")
def clients() -> None:
    """OAuth clients: list, create platform clients."""


@clients.command("list")
@click.option("--tenant", help="slug or id; default all tenants")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def clients_list(ctx: Context, tenant: str | None, as_json: bool) -> None:
    """List OAuth clients (never their secrets)."""
    from sqlalchemy import select

    from saas.auth.clients import to_public
    from saas.auth.models import OAuthClient
    from saas.identity.models import Tenant

    with ctx.database.transaction() as session:
        query = select(OAuthClient, Tenant.slug).outerjoin(Tenant, Tenant.id == OAuthClient.tenant_id)
        if tenant:
            query = query.where(OAuthClient.tenant_id == find_tenant(session, tenant).id)
        rows = [
            {**to_public(c), "tenant": slug}
            for c, slug in session.execute(query.order_by(OAuthClient.created_at))
        ]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{len(rows)} clients",
        ["client_id", "name", "tenant", "type", "grants", "created"],
        [
            [
                r["client_id"],
                r["name"],
                r["tenant"] or "(platform)",
                r["client_type"],
                ",".join(r["grant_types"]),
                r["created_at"],
            ]
            for r in rows
        ],
    )


@clients.command("create")
@click.option("--name", required=True)
@click.option("--type", "client_type", type=click.Choice(["public", "confidential"]), default="public")
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True)
@click.option("--scope", default="openid profile email api")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@fail_cleanly
def clients_create(
    ctx: Context, name: str, client_type: str, redirect_uris: tuple[str, ...], scope: str, as_json: bool
) -> None:
    """Register a first-party platform client (no owning tenant: users pick a tenant when they
    sign in). The secret of a confidential client is printed once."""
    import secrets

    from saas.auth.clients import to_public, validate_client_fields
    from saas.auth.models import OAuthClient
    from saas.db import utcnow
    from saas.security import token_hash as secret_hash

    data = {
        "name": name,
        "redirect_uris": list(redirect_uris),
        "scope": scope,
        "grant_types": ["authorization_code", "refresh_token"],
    }
    cleaned = validate_client_fields(data, client_type)
    secret = f"cs_{secrets.token_urlsafe(32)}" if client_type == "confidential" else None
    with ctx.database.transaction() as session:
        client = OAuthClient(
            client_id=f"c_{secrets.token_urlsafe(16)}",
            tenant_id=None,
            client_type=client_type,
            secret_hash=secret_hash(secret) if secret else None,
            secret_rotated_at=utcnow() if secret else None,
            first_party=True,
            role="member",
            **cleaned,
        )
        session.add(client)
        session.flush()
        out = to_public(client)
    security_log.warning(
        "platform client created",
        extra={
            "event": "client.created",
            "client_id": out["client_id"],
            "actor": operator_actor().id,
        },
    )
    if secret:
        out["client_secret"] = secret
    if as_json:
        print_json(out)
        return
    click.echo(f"client_id: {out['client_id']}")
    if secret:
        click.echo(f"client_secret (shown once): {secret}")


# --- users reset-mfa -----------------------------------------------------------------------------


@click.command("reset-mfa")
@click.argument("email")
@pass_ctx
@fail_cleanly
def reset_mfa(ctx: Context, email: str) -> None:
    """Remove a user's TOTP factor and recovery codes (lost device) and end their sessions.
    Audited in each of the user's tenants as ``mfa.reset`` by the operator."""
    from sqlalchemy import select

    from saas.auth import mfa, service
    from saas.identity.models import Membership, Tenant

    with ctx.database.transaction() as session:
        user = service.find_user_by_email(session, email)
        if user is None:
            raise CliError(f"no user {email!r}")
        tenants = list(
            session.scalars(
                select(Tenant)
                .join(Membership, Membership.tenant_id == Tenant.id)
                .where(Membership.user_id == user.id)
            )
        )
        had = mfa.reset(session, user, None, operator_actor())
        for tenant in tenants:
            if had:
                from saas import audit
                from saas.audit import AuditAction

                audit.record(
                    session,
                    AuditAction.MFA_RESET,
                    target_type="user",
                    target_id=user.id,
                    actor=operator_actor(),
                    tenant_id=tenant.id,
                )
            service.revoke_user_sessions(session, user.id, tenant.id, "mfa_reset")
    click.echo(f"MFA {'reset' if had else 'was not enabled'} for {email}; sessions revoked")


@click.command("rehash-recovery-codes")
@pass_ctx
@fail_cleanly
def rehash_recovery_codes(ctx: Context) -> None:
    """Rewrite recovery codes stored as plain SHA-256 (before keyed hashes) as HMAC-SHA256 under
    the key derived from SECRET_KEY; needs no code and no user. Idempotent; run once after
    upgrading (a user's old rows are otherwise rewritten at that user's next recovery-code check).
    """
    from saas.auth import mfa

    if not ctx.settings.secret_key:
        raise CliError("SECRET_KEY is not set: the keyed hashes would not verify in the server")
    with ctx.database.transaction() as session:
        count = mfa.rehash_legacy_recovery_codes(session, ctx.settings.secret_key)
    click.echo(f"{count} recovery code(s) rewritten")


def register(main: click.Group) -> None:
    """Add ``saas keys`` and ``saas clients``; add ``reset-mfa`` and ``rehash-recovery-codes``
    to ``saas users`` (:mod:`saas.ops.cli_ops`)."""
    main.add_command(keys)
    main.add_command(clients)
    users = group_of(main, "users")
    users.add_command(reset_mfa)
    users.add_command(rehash_recovery_codes)
