"""``/scim/v2``: the SCIM 2.0 service provider of each tenant (RFC 7644), one URL for all
tenants: the bearer token (:mod:`saas.scim.tokens`) names the tenant.

A plain Flask blueprint, not the ``/api/`` one: SCIM has its own media type
(``application/scim+json``, RFC 7644 section 3.1; ``application/json`` is accepted too), its own
error bodies (RFC 7644 section 3.12: ``schemas`` ``urn:ietf:params:scim:api:messages:2.0:Error``,
``status`` as a string, ``scimType``) and its own authentication (the ``/api/`` bearer hook does
not run here). The request's unit of work commits after a 2xx/3xx answer and rolls back on any
error, so a refused request changes nothing. The tenant's plan must include ``sso``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from flask import Blueprint, Response, g, request
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    ETag,
    Filter,
    ForbiddenException,
    Group,
    InvalidValueException,
    NotFoundException,
    Patch,
    ResourceType,
    SCIMException,
    ServiceProviderConfig,
    Sort,
    UnauthorizedException,
    User,
)
from werkzeug.exceptions import HTTPException

from saas import db
from saas.actions import ActionContext
from saas.audit import Actor, RequestMeta
from saas.billing import entitlements
from saas.errors import AppError
from saas.http import request_header
from saas.scim import service, tokens
from saas.scim.service import Scope

MEDIA_TYPE = "application/scim+json"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"

blp = Blueprint("scim", __name__, url_prefix="/scim/v2")


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    response = Response(orjson.dumps(body), status=status, mimetype=MEDIA_TYPE)
    for k, v in (headers or {}).items():
        response.headers[k] = v
    response.headers["Cache-Control"] = "no-store"
    return response


def error_response(exc: SCIMException) -> Response:
    """RFC 7644 section 3.12's body for ``exc``."""
    body = {"schemas": [ERROR_SCHEMA], "status": str(exc.status), "detail": exc.detail}
    if exc.scim_type:
        body["scimType"] = exc.scim_type
    headers = {"WWW-Authenticate": 'Bearer realm="scim"'} if exc.status == 401 else None
    if exc.status == 405:
        headers = {"Allow": "GET"}
    return _json(body, exc.status, headers)


@blp.errorhandler(SCIMException)
def _scim_error(exc: SCIMException) -> Response:
    return error_response(exc)


@blp.errorhandler(AppError)
def _app_error(err: AppError) -> Response:
    response = error_response(service.app_error_to_scim(err))
    for name, value in err.headers.items():  # Retry-After of a 429 or 503
        if name.lower() != "www-authenticate":
            response.headers[name] = value
    return response


@blp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> Response:
    exc = SCIMException(detail=err.description or err.name)
    exc.status = err.code or 500
    if exc.status == 400:
        exc.scim_type = "invalidSyntax"
    response = error_response(exc)
    if exc.status == 405 and getattr(err, "valid_methods", None):
        response.headers["Allow"] = ", ".join(err.valid_methods)
    return response


def _base_url() -> str:
    return request.host_url.rstrip("/") + blp.url_prefix


@blp.before_request
def _authenticate() -> None:
    """The bearer token names the tenant (RFC 6750 section 2.1); nothing else is accepted."""
    header = request_header("Authorization")
    scheme, _, presented = header.partition(" ")
    found = tokens.authenticate(db.session(), presented.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        raise UnauthorizedException(detail="A valid SCIM bearer token is required.")
    token, tenant = found
    if not entitlements.has(tenant, "sso"):
        raise ForbiddenException(
            detail="The tenant's plan does not include SCIM provisioning (feature 'sso')."
        )
    ctx = ActionContext(db.session(), Actor("scim", str(token.id)), None, RequestMeta.current())
    g.scim_scope = Scope(ctx=ctx, tenant=tenant, token=token, base_url=_base_url())


def _scope() -> Scope:
    return g.scim_scope


def _body() -> dict:
    data = request.get_data(cache=True)
    try:
        body = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        from scim2_models import InvalidSyntaxException

        raise InvalidSyntaxException(detail="The request body is not JSON.") from None
    return body


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidValueException(detail=f"{name} must be an integer.") from None


def _one(model, version: int, status: int = 200) -> Response:
    params = service.response_parameters(
        request.args.get("attributes"), request.args.get("excludedAttributes")
    )
    headers = {"ETag": service.etag(version)}
    if status == 201 and model.meta is not None and model.meta.location:
        headers["Location"] = model.meta.location
    return _json(service.serialise(model, params), status, headers)


def _not_modified(version: int) -> bool:
    header = request_header("If-None-Match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or service.etag(version).removeprefix("W/") in tags


def _list(total: int, start: int, resources: list) -> Response:
    params = service.response_parameters(
        request.args.get("attributes"), request.args.get("excludedAttributes")
    )
    return _json(
        {
            "schemas": [service.LIST_SCHEMA],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": len(resources),
            "Resources": [service.serialise(r, params) for r in resources],
        }
    )


def _query_args() -> dict:
    return {
        "filter": request.args.get("filter"),
        "start_index": _int_arg("startIndex"),
        "count": _int_arg("count"),
        "sort_by": request.args.get("sortBy"),
        "sort_order": request.args.get("sortOrder"),
    }


def _search(run) -> Response:
    """``POST .../.search`` (RFC 7644 section 3.4.3): the query in a SearchRequest body."""
    from scim2_models import SearchRequest

    raw = _body()
    request_ = service.validate(SearchRequest, raw if raw is not None else {}, Context.SEARCH_REQUEST)

    def names(values) -> str | None:
        return ",".join(str(v) for v in values) if values else None

    params = service.response_parameters(names(request_.attributes), names(request_.excluded_attributes))
    total, start, resources = run(
        _scope(),
        filter=str(request_.filter) if request_.filter else None,
        start_index=request_.start_index,
        count=request_.count,
        sort_by=str(request_.sort_by) if request_.sort_by else None,
        sort_order=str(getattr(request_.sort_order, "value", request_.sort_order) or "") or None,
    )
    return _json(
        {
            "schemas": [service.LIST_SCHEMA],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": len(resources),
            "Resources": [service.serialise(r, params) for r in resources],
        }
    )


@blp.route("/Users/.search", methods=["POST"])
def search_users() -> Response:
    return _search(service.list_users)


@blp.route("/Groups/.search", methods=["POST"])
def search_groups() -> Response:
    return _search(service.list_groups)


@blp.route("/.search", methods=["POST"])
def search_all() -> Response:
    """Searching Users and Groups at once is not supported: 501 (RFC 7644 section 3.4.3)."""
    from scim2_models import NotImplementedException

    raise NotImplementedException(detail="Search /Users/.search or /Groups/.search.")


# --- Users -----------------------------------------------------------------------------------


@blp.route("/Users", methods=["GET", "POST"])
def users() -> Response:
    return _collection(service.create_user, service.list_users)


@blp.route("/Users/<user_id>", methods=["GET", "PUT", "PATCH", "DELETE"])
def user(user_id: str) -> Response:
    return _resource(user_id, service.get_user, service.replace_user, service.patch_user, service.delete_user)


# --- Groups ----------------------------------------------------------------------------------


@blp.route("/Groups", methods=["GET", "POST"])
def groups() -> Response:
    return _collection(service.create_group, service.list_groups)


@blp.route("/Groups/<group_id>", methods=["GET", "PUT", "PATCH", "DELETE"])
def group(group_id: str) -> Response:
    return _resource(
        group_id, service.get_group, service.replace_group, service.patch_group, service.delete_group
    )


def _collection(create: Callable[..., Any], search: Callable[..., Any]) -> Response:
    """A resource type's endpoint: ``POST`` creates (201, RFC 7644 section 3.3), ``GET`` queries
    (section 3.4.2)."""
    if request.method == "POST":
        model, version = create(_scope(), _body())
        return _one(model, version, 201)
    return _list(*search(_scope(), **_query_args()))


def _resource(
    resource_id: str,
    get: Callable[..., Any],
    replace: Callable[..., Any],
    patch: Callable[..., Any],
    delete: Callable[..., Any],
) -> Response:
    """One resource's endpoint: ``GET`` (304 on a matching ``If-None-Match``), ``PUT``, ``PATCH``
    and ``DELETE`` (204), the writes under ``If-Match`` (RFC 7644 sections 3.4.1, 3.5, 3.6, 3.14)."""
    scope, if_match = _scope(), request_header("If-Match") or None
    if request.method == "GET":
        model, version = get(scope, resource_id)
        if _not_modified(version):
            return Response(status=304, headers={"ETag": service.etag(version)})
        return _one(model, version)
    if request.method == "PUT":
        return _one(*replace(scope, resource_id, _body(), if_match))
    if request.method == "PATCH":
        return _one(*patch(scope, resource_id, _body(), if_match))
    delete(scope, resource_id, if_match)
    return Response(status=204)


# --- discovery (RFC 7644 section 4) ----------------------------------------------------------


def _service_provider_config() -> dict:
    config = ServiceProviderConfig(
        documentation_uri=None,
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=service.MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=True),
        etag=ETag(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="OAuth Bearer Token",
                description="A tenant's SCIM token (saas_scim_...), created with POST /api/v1/scim/tokens.",
                primary=True,
            )
        ],
    )
    body = config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    body["meta"] = {
        "resourceType": "ServiceProviderConfig",
        "location": f"{_base_url()}/ServiceProviderConfig",
    }
    return body


def _resource_types() -> list[dict]:
    out = []
    for model in (User[EnterpriseUser], Group):
        rt = ResourceType.from_resource(model)
        body = rt.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        body["meta"] = {"resourceType": "ResourceType", "location": f"{_base_url()}/ResourceTypes/{rt.id}"}
        out.append(body)
    return out


def _schemas() -> list[dict]:
    out = []
    for model in (User, EnterpriseUser, Group):
        schema = model.to_schema()
        body = schema.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        if model is User:  # a member is an account, and an account is an email address
            for attribute in body["attributes"]:
                if attribute["name"] == "emails":
                    attribute["required"] = True
                    for sub in attribute.get("subAttributes", []):
                        sub["required"] = sub["required"] or sub["name"] == "value"
        body["meta"] = {"resourceType": "Schema", "location": f"{_base_url()}/Schemas/{schema.id}"}
        out.append(body)
    return out


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@blp.before_request
def _read_only_discovery() -> None:
    """The discovery endpoints are read-only (RFC 7644 section 4): 405 with ``Allow: GET``."""
    rule = request.url_rule
    if request.method != "GET" and rule is not None and rule.endpoint in _DISCOVERY:
        exc = SCIMException(detail=f"{request.path} is read-only.")
        exc.status = 405
        raise exc


_DISCOVERY = {
    "scim.service_provider_config",
    "scim.resource_types",
    "scim.resource_type",
    "scim.schemas",
    "scim.schema",
}


def _listed(items: list[dict]) -> Response:
    return _json(
        {
            "schemas": [service.LIST_SCHEMA],
            "totalResults": len(items),
            "startIndex": 1,
            "itemsPerPage": len(items),
            "Resources": items,
        }
    )


@blp.route("/ServiceProviderConfig", methods=ALL_METHODS)
def service_provider_config() -> Response:
    return _json(_service_provider_config())


@blp.route("/ResourceTypes", methods=ALL_METHODS)
def resource_types() -> Response:
    return _listed(_resource_types())


@blp.route("/ResourceTypes/<name>", methods=ALL_METHODS)
def resource_type(name: str) -> Response:
    return _by_id(_resource_types(), name, f"No resource type {name!r}.")


@blp.route("/Schemas", methods=ALL_METHODS)
def schemas() -> Response:
    return _listed(_schemas())


@blp.route("/Schemas/<path:schema_id>", methods=ALL_METHODS)
def schema(schema_id: str) -> Response:
    return _by_id(_schemas(), schema_id, f"No schema {schema_id!r}.")


def _by_id(items: list[dict], wanted: str, detail: str) -> Response:
    """The discovery resource whose ``id`` is ``wanted``; else a SCIM 404 (RFC 7644 section 4)."""
    for item in items:
        if item["id"] == wanted:
            return _json(item)
    raise NotFoundException(detail=detail)


__all__ = ["blp", "error_response"]


@blp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str) -> Response:
    """Anything else under ``/scim/v2``: a SCIM 404, not the API's problem document."""
    raise NotFoundException(detail=f"No SCIM endpoint /{rest}.")
