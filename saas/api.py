"""The HTTP API surface: flask-smorest ``Api`` with an OpenAPI 3 document, bearer security
scheme and RFC 9457 problem responses, plus request-level guards (415 for non-JSON bodies).

``GET /openapi.json`` serves the document; ``GET /docs`` the interactive Swagger UI, its assets
served by the app from the ``swagger-ui-bundle`` package (no CDN) under a strict
Content-Security-Policy (:data:`DOCS_CSP`: scripts, styles and requests to this origin only,
no inline script).
"""

from __future__ import annotations

import copy
import datetime
import functools
import http
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import marshmallow as ma
import orjson
from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api
from flask_smorest import Blueprint as _Blueprint
from flask_smorest.pagination import PaginationMetadataSchema
from flask_smorest.utils import prepare_response
from webargs.flaskparser import FlaskParser

from saas.errors import PROBLEM_JSON, AppError, BadRequest, ErrorCode, NotFound, ValidationError
from saas.http import request_header
from saas.memo import Memo

JSON_PATHS = ("/api/",)
FORM_PATHS = ("/oauth/token", "/oauth/revoke", "/oauth/introspect")
FORM_MIMETYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_BODY_BYTES = 1024 * 1024
#: the highest page number a paginated endpoint accepts
MAX_PAGE = 1_000_000


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson doing the encoding (``jsonify``, flask-smorest
    responses, problems): about ten times faster than the standard library's encoder, and it
    writes ``datetime`` (RFC 3339, as ``isoformat()``), ``date``, ``UUID`` and dataclasses
    itself, so views can hand rows over without converting each value.

    Keys are sorted (Flask's default). What orjson cannot encode goes through Flask's own
    ``default`` (``Decimal`` -> string, ``__html__``); what it refuses outright (an integer
    beyond 64 bits) and any call with explicit options (``indent``, ...) use the standard
    library's encoder, so the output is the same document either way. Decoding stays with the
    standard library (its error messages are the ones the API reports)."""

    OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:
            return super().dumps(obj, **kwargs)
        return self.dumpb(obj).decode()

    def dumpb(self, obj: Any) -> bytes:
        """``obj`` as compact JSON bytes."""
        try:
            return orjson.dumps(obj, default=self.default, option=self.OPTIONS)
        except TypeError:
            return super().dumps(obj, separators=(",", ":")).encode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Decode with the standard library; a document nested deeper than Python's recursion
        limit is a :class:`ValueError` (Flask's 400 for an undecodable body), never a 500."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        if (self._app.debug and self.compact is None) or self.compact is False:
            return super().response(obj)
        return self._app.response_class(self.dumpb(obj) + b"\n", mimetype=self.mimetype)


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details. Problems carry extension members (section 3.2: ``errors``,
    ``retry_after``, ``permission``, OAuth's ``error``...), so the document allows members
    beyond those declared here (``additionalProperties: true``), as the RFC tells clients to
    ignore the ones they do not know."""

    class Meta:
        unknown = ma.INCLUDE  # documented as additionalProperties: true

    type = ma.fields.String(metadata={"example": "https://errors.saas.dev/not_found"})
    title = ma.fields.String()
    status = ma.fields.Integer()
    detail = ma.fields.String()
    code = ma.fields.String()
    instance = ma.fields.String()
    request_id = ma.fields.String()
    errors = ma.fields.Dict(metadata={"description": "422 only: messages per field"})
    retry_after = ma.fields.Integer(metadata={"description": "429 only: seconds until a retry may pass"})
    permission = ma.fields.String(metadata={"description": "403 permission_denied: the permission lacking"})
    error = ma.fields.String(metadata={"description": "OAuth endpoints: the RFC 6749 section 5.2 code"})
    error_description = ma.fields.String(metadata={"description": "OAuth endpoints: RFC 6749 section 5.2"})


class QueryArgsSchema(ma.Schema):
    """Base of query-string schemas whose parsed arguments may be memoised per query string
    (:class:`_SchemaReusingParser`): their loading must be a pure function of the query string
    (no validator reading the clock, the caller or the database). The rule is checked: a parse
    is kept only when :func:`query_schema_problems` finds nothing, and the tests check that no
    memoised schema of the app is refused (tests/test_memo.py)."""


#: values a memoised parse result may hold (shared between requests, so never mutable)
_IMMUTABLE = (str, int, float, bool, type(None), uuid.UUID, datetime.date, datetime.datetime, frozenset)
#: field types whose loading depends on the value alone (exact types: a subclass may override
#: ``_deserialize``)
_PURE_FIELDS = frozenset({
    ma.fields.String, ma.fields.Email, ma.fields.UUID, ma.fields.Integer, ma.fields.Float, ma.fields.Boolean,
    ma.fields.Date, ma.fields.DateTime, ma.fields.AwareDateTime, ma.fields.NaiveDateTime,
})  # fmt: skip
#: validators whose verdict depends on the value alone (exact types)
_PURE_VALIDATORS = frozenset({
    ma.validate.Length, ma.validate.OneOf, ma.validate.NoneOf, ma.validate.Range, ma.validate.Regexp,
    ma.validate.Equal, ma.validate.Email,
})  # fmt: skip
#: schema hooks that depend on the loaded values alone: flask-smorest's pagination schema
#: builds its ``PaginationParameters`` from ``page`` and ``page_size``
_PURE_HOOKS = frozenset({
    "flask_smorest.pagination._pagination_parameters_schema_factory.<locals>.PaginationParametersSchema"
    ".make_paginator",
})  # fmt: skip
_ABSENT = object()


def query_schema_problems(schema: ma.Schema) -> list[str]:
    """Why loading ``schema`` might not be a function of the query string alone; empty when it
    is. Allowed: the field types of :data:`_PURE_FIELDS`, the validators of
    :data:`_PURE_VALIDATORS`, constant ``load_default`` values and the hooks of
    :data:`_PURE_HOOKS`; anything else (a ``@validates`` or ``@post_load`` of one's own, a
    ``Method`` field, ``load_default=datetime.now``, a validator function) may read the clock,
    the caller or the database, so its parse is not kept."""
    problems = []
    for tag, hooks in schema._hooks.items():
        for attr_name, _many, _options in hooks:
            hook = getattr(type(schema), attr_name, None)
            where = f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', attr_name)}"
            if where not in _PURE_HOOKS:
                problems.append(f"{attr_name}: {tag} hook {where}")
    for name, field in schema.fields.items():
        if type(field) not in _PURE_FIELDS:
            problems.append(f"{name}: field type {type(field).__name__}")
        if callable(field.load_default):
            problems.append(f"{name}: load_default is computed ({field.load_default!r})")
        for validator in field.validators:
            if type(validator) not in _PURE_VALIDATORS:
                problems.append(f"{name}: validator {validator!r}")
    return problems


class _SchemaReusingParser(FlaskParser):
    """webargs parser that builds a schema given as a class once, not on every request
    (marshmallow's ``Schema.__init__`` deep-copies the declared fields: ~40 us each time).
    Schemas keep no per-load state, so one instance serves every request.

    With ``memoize`` (every schema, as for flask-smorest's pagination parameters) or for a
    :class:`QueryArgsSchema`, a query-string parse is kept per query string (memo
    ``api.query_args``): a list endpoint is called with the same few query strings over and
    over (without it the contacts list costs 8 % more instructions, docs/benchmarks.md). Each
    request gets its own shallow copy of the result. Kept only: results made of immutable
    values, of a schema :func:`query_schema_problems` accepts, parsed without a ``validate``
    function. Invalid input is never kept (it raises before)."""

    def __init__(self, *args: Any, memoize: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memoize = memoize
        #: (schema, location, unknown, query string) -> the parsed arguments
        self._parsed: Memo[tuple[Any, str, Any, bytes], Any] = Memo("api.query_args", maxsize=4096)

    def _raw_load_json(self, req: Any) -> Any:
        """webargs' body decoding (the standard library's), with a document nested deeper than
        Python's recursion limit answered as invalid JSON (400), never a 500."""
        try:
            return super()._raw_load_json(req)
        except RecursionError as exc:
            self._handle_invalid_json_error(ValueError(str(exc)), req)  # type: ignore[arg-type]

    def parse(self, argmap: Any, req: Any = None, *, location: str | None = None, **kwargs: Any) -> Any:
        schema_type = argmap if isinstance(argmap, type) else type(argmap)
        if (
            location not in ("query", "querystring")
            or kwargs.get("validate") is not None
            or not (self.memoize or issubclass(schema_type, QueryArgsSchema))
        ):
            return super().parse(argmap, req, location=location, **kwargs)
        req = req or request
        key = (argmap, location, kwargs.get("unknown", _ABSENT), req.query_string)
        kept = self._parsed.get(key)  # a dict or an object, never None
        if kept is None:
            kept = super().parse(argmap, req, location=location, **kwargs)
            values = kept.values() if isinstance(kept, dict) else vars(kept).values()
            if not all(isinstance(value, _IMMUTABLE) for value in values):
                return kept
            if query_schema_problems(self._get_schema(argmap, req)):
                return kept
            self._parsed.put(key, kept)
        return copy.copy(kept)

    def _get_schema(self, argmap, req):
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            schema = _SCHEMAS.get(argmap)
            if schema is None:
                schema = _SCHEMAS[argmap] = argmap()
            return schema
        return super()._get_schema(argmap, req)


_SCHEMAS: dict[type, ma.Schema] = {}


class ListPageMetadataSchema(PaginationMetadataSchema):
    """``X-Pagination`` as documented: flask-smorest's members, plus those of the list pages of
    :mod:`saas.pagination` (a capped total, the next cursor)."""

    total_at_least = ma.fields.Int(
        metadata={
            "description": "Instead of total when the count stopped at its cap: "
            "the set holds at least this many."
        }
    )
    next_cursor = ma.fields.String(
        allow_none=True,
        metadata={"description": "Cursor pages: the `cursor` of the next page; null on the last page."},
    )


#: the ``Link`` response header of list pages (RFC 8288)
LINK_HEADER = {
    "description": 'RFC 8288: `<...>; rel="next"`, the next page as a cursor page, when there is one',
    "schema": {"type": "string"},
}


class Blueprint(_Blueprint):
    """flask-smorest blueprint; pagination metadata goes in the ``X-Pagination`` header.

    ``alt_response`` for an error status documents an RFC 9457 problem body by default.
    """

    ARGUMENTS_PARSER = _SchemaReusingParser()
    PAGINATION_ARGUMENTS_PARSER = _SchemaReusingParser(memoize=True)

    @staticmethod
    def _make_pagination_metadata(page, page_size, item_count):
        """flask-smorest's metadata, built as the plain dict its schema would dump (every value an
        int) instead of through a marshmallow dump per request."""
        metadata: dict[str, int] = {"total": item_count}
        if item_count == 0:
            metadata["total_pages"] = 0
        else:
            last_page = (item_count - 1) // page_size + 1
            metadata.update(total_pages=last_page, first_page=1, last_page=last_page)
            if page <= last_page:
                metadata["page"] = page
                if page > 1:
                    metadata["previous_page"] = page - 1
                if page < last_page:
                    metadata["next_page"] = page + 1
        return metadata

    def _set_pagination_metadata(self, page_params, result, headers):
        """flask-smorest's header, or the metadata a list page (:mod:`saas.pagination`) made."""
        metadata = getattr(page_params, "metadata", None)
        if metadata is None:
            return super()._set_pagination_metadata(page_params, result, headers)
        headers = {} if headers is None else headers
        headers[self.PAGINATION_HEADER_NAME] = json.dumps(metadata)
        return result, headers

    def _document_pagination_metadata(self, spec, resp_doc):
        super()._document_pagination_metadata(spec, resp_doc)
        resp_doc["headers"].setdefault("Link", "LINK")

    def paginate(self, pager=None, **kwargs):
        """flask-smorest's ``paginate``, with ``page`` bounded (an offset past PostgreSQL's
        bigint would otherwise fail in the database)."""
        outer = super().paginate(pager, **kwargs)

        def decorator(func):
            @functools.wraps(func)
            def checked(*args, **kw):
                params = kw.get("pagination_parameters")
                if params is not None and params.page > MAX_PAGE:
                    raise ValidationError({"page": [f"Must be at most {MAX_PAGE}."]})
                return func(*args, **kw)

            return outer(checked)

        return decorator

    def alt_response(self, status_code, response=None, **kwargs):
        if response is None and int(status_code) >= 400 and kwargs.get("schema") is None:
            kwargs["schema"] = ProblemSchema
            kwargs.setdefault("content_type", PROBLEM_JSON)
        return super().alt_response(status_code, response, **kwargs)


class _Api(Api):
    """flask-smorest ``Api`` whose error responses are documented as ``application/problem+json``."""

    def _register_pagination_header(self) -> None:
        self.spec.components.header(
            "PAGINATION", {"description": "Pagination metadata", "schema": ListPageMetadataSchema}, lazy=True
        )
        self.spec.components.header("LINK", LINK_HEADER, lazy=True)

    def _register_responses(self) -> None:
        for status in http.HTTPStatus:
            response: dict = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_JSON if status >= 400 else "application/json")
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Error (RFC 9457 problem details)", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_JSON)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)


def document_auth(view: Callable[..., Any], permission: str | None) -> None:
    """Add 401 and 403 problem responses and ``x-required-permission`` to ``view``'s OpenAPI
    operation (flask-smorest keeps an operation's documentation in ``view._apidoc``)."""
    doc = copy.deepcopy(getattr(view, "_apidoc", {}))
    responses = doc.setdefault("response", {}).setdefault("responses", {})
    responses.setdefault(401, []).append("UNAUTHORIZED")
    responses.setdefault(403, []).append("FORBIDDEN")
    if permission:
        doc.setdefault("manual_doc", {})["x-required-permission"] = permission
    else:
        doc.setdefault("manual_doc", {})["x-required-authentication"] = "any member of the token's tenant"
    view._apidoc = doc  # type: ignore[attr-defined]


def document_errors_as(media_type: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator (below the route decorator): document ``view``'s error responses (``default``)
    as ``media_type`` instead of ``application/problem+json``. The OAuth token, revocation and
    introspection endpoints answer errors as RFC 6749 section 5.2 requires, ``application/json``,
    with the problem members alongside ``error`` (:func:`saas.auth.errors.oauth_response`)."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        doc = copy.deepcopy(getattr(view, "_apidoc", {}))
        responses = doc.setdefault("manual_doc", {}).setdefault("responses", {})
        responses["default"] = {
            "description": "Error (RFC 6749 section 5.2 members with RFC 9457's)",
            "content": {media_type: {"schema": ProblemSchema}},
        }
        view._apidoc = doc  # type: ignore[attr-defined]
        return view

    return decorator


class UnsupportedMediaType(AppError):
    status, code, title = 415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Unsupported media type"


class PayloadTooLarge(AppError):
    status, code, title = 413, ErrorCode.PAYLOAD_TOO_LARGE, "Payload too large"


def _check_media_type() -> None:
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body may be at most {MAX_BODY_BYTES} bytes.")
    path = request.path
    has_body = (length or 0) > 0 or request_header("Transfer-Encoding")
    if not has_body:
        return  # nothing to decode: the view reports what is missing
    if path.startswith(JSON_PATHS):
        if not request.is_json:
            raise UnsupportedMediaType("Send the body as application/json.")
    elif path.startswith(FORM_PATHS) and request.mimetype != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("Send the body as application/x-www-form-urlencoded (RFC 6749).")


NUL_MESSAGE = "Must not contain NUL characters (U+0000)."
SURROGATE_MESSAGE = "Must not contain unpaired surrogates (U+D800 to U+DFFF): not Unicode text."
#: the characters no PostgreSQL text (nor UTF-8) can hold
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text: NUL (U+0000) or an unpaired surrogate (a JSON
    ``\\ud800`` escape decodes to one); None when it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    return NUL_MESSAGE if found.group() == "\x00" else SURROGATE_MESSAGE


#: how deeply a JSON body may nest (no schema of the API nests more than a few levels)
MAX_JSON_DEPTH = 32


class _TooDeep(Exception):
    pass


def _nul_errors(value: Any, depth: int = 0) -> dict | list | None:
    """Per-field errors for strings that text cannot hold (NUL, unpaired surrogates) in decoded
    JSON, nested like marshmallow's.

    Raises:
        _TooDeep: the document nests deeper than :data:`MAX_JSON_DEPTH`.
    """
    if isinstance(value, str):
        problem = _text_problem(value)
        return [problem] if problem else None
    if depth > MAX_JSON_DEPTH:
        raise _TooDeep
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    errors: dict = {}
    for key, item in items:
        if isinstance(key, str) and (problem := _text_problem(key)):
            errors[_UNSTORABLE.sub("", key)] = [problem]
        elif (found := _nul_errors(item, depth + 1)) is not None:
            errors[key] = found
    return errors or None


def text_errors(value: Any) -> dict | list | None:
    """Per-field errors (marshmallow's shape) for the strings in decoded JSON ``value`` that
    PostgreSQL text cannot hold: NUL (U+0000) and unpaired surrogates. None when all can be.

    Raises:
        ValueError: ``value`` nests deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        return _nul_errors(value)
    except _TooDeep:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None


def _refuse_nul_characters() -> None:
    """PostgreSQL text cannot hold U+0000: refuse it at the edge with a 422 naming the field,
    instead of a database error (500) deep in a view."""
    if "\x00" in request.path:
        raise NotFound("No such resource.")  # no route's id holds a NUL (and no text column could look it up)
    errors: dict = {}
    for key, values in request.args.lists():
        problems = [p for p in (_text_problem(key), *map(_text_problem, values)) if p]
        if problems:
            errors[_UNSTORABLE.sub("", key)] = problems[:1]
    if request.method in ("POST", "PUT", "PATCH") and request.path.startswith(JSON_PATHS) and request.is_json:
        try:
            found = _nul_errors(request.get_json(silent=True))
        except _TooDeep:
            raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.") from None
        if isinstance(found, dict):
            errors.update(found)
        elif found:
            errors["_schema"] = found
    if request.method in ("POST", "PUT", "PATCH") and request.mimetype in FORM_MIMETYPES:
        # form bodies: the OAuth endpoints and the hosted login pages
        for key, values in request.form.lists():
            problems = [p for p in (_text_problem(key), *map(_text_problem, values)) if p]
            if problems:
                errors[_UNSTORABLE.sub("", key)] = problems[:1]
    if errors:
        if request.path.startswith("/oauth/"):
            # RFC 6749 section 5.2 shape for the OAuth endpoints (hosted pages get it too)
            raise AppError(
                "Parameters must not contain NUL characters (U+0000).",
                status=400,
                code=ErrorCode.INVALID_REQUEST,
                title="Invalid request",
                extra={
                    "error": "invalid_request",
                    "error_description": "Parameters must not contain NUL characters (U+0000).",
                    "errors": errors,
                },
            )
        raise ValidationError(errors)


#: the /docs page and its assets: everything from this origin, no inline script or style
#: element, no plugins, no framing; ``data:`` images are the icons inside Swagger UI's CSS
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: the files of ``swagger_ui_bundle.swagger_ui_path`` the page uses (nothing else is served)
DOCS_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})
#: the page's initializer, a script file of its own (an inline script would need
#: 'unsafe-inline'); the document's URL comes from the page (``data-url``)
DOCS_INIT_JS = """\
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.url,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""
_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{assets}favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui" data-url="{spec_url}"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script src="{init}"></script>
</body>
</html>
"""


def _init_docs(app: Flask) -> None:
    """``GET /docs`` (Swagger UI), ``/docs/init.js`` and ``/docs/assets/<name>``, all under
    :data:`DOCS_CSP`."""
    from pathlib import Path

    import swagger_ui_bundle
    from flask import Blueprint as FlaskBlueprint
    from flask import abort, send_from_directory, url_for
    from markupsafe import escape

    root = Path(str(swagger_ui_bundle.swagger_ui_path))
    docs = FlaskBlueprint("swagger_ui", __name__)

    @docs.get("/docs")
    def page() -> Response:
        html = _DOCS_PAGE.format(
            title=escape(app.config["API_TITLE"]),
            assets=url_for("swagger_ui.page") + "/assets/",
            init=url_for("swagger_ui.init_js"),
            spec_url=escape(url_for("api-docs.openapi_json")),
        )
        return Response(html, mimetype="text/html")

    @docs.get("/docs/init.js")
    def init_js() -> Response:
        response = Response(DOCS_INIT_JS, mimetype="text/javascript")
        response.cache_control.max_age = 3600
        return response

    @docs.get("/docs/assets/<name>")
    def asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            abort(404)
        return send_from_directory(root, name, max_age=86400)

    @docs.after_request
    def _policy(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = DOCS_CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app.register_blueprint(docs)


def init_app(app: Flask) -> Api:
    app.config.setdefault("API_TITLE", "SaaS backend API")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    app.config.setdefault(
        "API_SPEC_OPTIONS",
        {
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                }
            },
            "security": [{"bearerAuth": []}],
            "info": {"description": "Multi-tenant SaaS backend. Errors are RFC 9457 problem documents."},
        },
    )
    app.json = OrjsonProvider(app)
    api = _Api()
    api.ERROR_SCHEMA = ProblemSchema
    api.init_app(app)
    _init_docs(app)  # flask-smorest's own Swagger UI page loads from a CDN with an inline script
    app.before_request(_check_media_type)
    app.before_request(_refuse_nul_characters)
    return api
