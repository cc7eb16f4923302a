"""The OpenAPI 3 document and the interactive docs."""

from __future__ import annotations

import pytest

PROBLEM = "application/problem+json"


@pytest.fixture()
def spec(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    return r.get_json()


def _resolve(spec, response):
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[-1]
        return spec["components"]["responses"][name]
    return response


def test_document_basics(spec):
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"] == "v1"
    for path in (
        "/api/v1/signup",
        "/api/v1/auth/login",
        "/api/v1/contacts",
        "/api/v1/contacts/{contact_id}",
        "/api/v1/members",
        "/api/v1/members/{user_id}",
        "/api/v1/invitations/accept",
        "/api/v1/audit-events",
        "/api/v1/me",
        "/api/v1/tenant",
        "/oauth/token",
    ):
        assert path in spec["paths"], path


def test_bearer_security_scheme(spec):
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert spec["security"] == [{"bearerAuth": []}]
    # public operations opt out
    assert spec["paths"]["/api/v1/signup"]["post"]["security"] == []
    assert spec["paths"]["/api/v1/auth/login"]["post"]["security"] == []


def test_error_responses_are_problem_documents(spec):
    problem = spec["components"]["schemas"]["Problem"]["properties"]
    assert {"type", "title", "status", "detail", "code", "instance", "errors"} <= set(problem)
    op = spec["paths"]["/api/v1/contacts/{contact_id}"]["patch"]
    for status in ("default", "401", "403", "412", "422"):
        response = _resolve(spec, op["responses"][status])
        assert list(response["content"]) == [PROBLEM], (status, response)
        assert response["content"][PROBLEM]["schema"]["$ref"].endswith("/Problem")
    assert op["x-required-permission"] == "contacts:write"


def test_every_secured_operation_documents_401_403_and_its_permission(spec):
    count = 0
    for path, ops in spec["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, op in ops.items():
            if method not in ("get", "post", "put", "patch", "delete") or op.get("security") == []:
                continue
            if {} in op.get("security", []):  # bearer or another credential (an mfa_token)
                continue
            assert "401" in op["responses"] and "403" in op["responses"], (method, path)
            assert op.get("x-required-permission") or op.get("x-required-authentication"), (method, path)
            count += 1
    assert count >= 10


def test_docs_serve_html(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert "swagger" in r.get_data(as_text=True).lower()
    assert "/openapi.json" in r.get_data(as_text=True)


def test_problem_schema_allows_extension_members(spec):
    """RFC 9457 section 3.2: problems carry extension members (``errors``, ``retry_after``,
    ``permission``, OAuth's ``error``...); the document must not forbid them."""
    problem = spec["components"]["schemas"]["Problem"]
    assert problem.get("additionalProperties", True) is not False
    assert {"errors", "retry_after", "permission", "error", "error_description"} <= set(problem["properties"])


def test_oauth_endpoints_document_json_errors_and_their_success_bodies(spec):
    """RFC 6749 section 5.2 errors are ``application/json`` (problem members alongside)."""
    for path in ("/oauth/token", "/oauth/revoke", "/oauth/introspect"):
        responses = spec["paths"][path]["post"]["responses"]
        assert list(responses["default"]["content"]) == ["application/json"], path
        assert responses["default"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
        assert "200" in responses, path
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server",
                 "/.well-known/jwks.json"):  # fmt: skip
        assert list(spec["paths"][path]["get"]["responses"]["200"]["content"]) == ["application/json"]
    # the other OAuth endpoint answers problems like the API
    userinfo = spec["paths"]["/oauth/userinfo"]["get"]["responses"]
    assert list(_resolve(spec, userinfo["default"])["content"]) == [PROBLEM]


def test_billing_operations_document_their_503_without_stripe(spec):
    for path, ops in spec["paths"].items():
        if path.startswith(("/api/v1/billing", "/webhooks/stripe")):
            for method, op in ops.items():
                if method in ("get", "post", "put", "patch", "delete"):
                    assert "503" in op["responses"], (method, path)


def _csp(header: str) -> dict[str, list[str]]:
    directives = [d.split() for d in header.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


def test_docs_page_is_served_from_the_app_under_a_strict_csp(client):
    """Swagger UI's assets come from the ``swagger-ui-bundle`` package through the app, not a
    CDN; the page has no inline script or style, and its CSP allows this origin only."""
    import re

    r = client.get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = _csp(r.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'none'"]
    assert not any("unsafe" in v or "*" in v or "http" in v for values in csp.values() for v in values)
    html = r.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html and "//" not in html.replace("<!--", "")
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/' in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html and "style=" not in html and not re.search(r"\son\w+=", html)  # no handlers
    urls = re.findall(r'(?:src|href|data-url)="([^"]+)"', html)
    assert "/openapi.json" in urls and "/docs/assets/swagger-ui-bundle.js" in urls
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.startswith("/docs/"):
            assert asset.headers["Content-Security-Policy"] == r.headers["Content-Security-Policy"]
    init = client.get("/docs/init.js")
    assert init.mimetype == "text/javascript" and "http" not in init.get_data(as_text=True)
    assert "validatorUrl: null" in init.get_data(as_text=True)  # no badge from validator.swagger.io


def test_docs_assets_are_an_allow_list(client):
    for name in ("index.html", "swagger-ui-bundle.js.map", "..%2F__init__.py", "oauth2-redirect.html"):
        r = client.get(f"/docs/assets/{name}")
        assert r.status_code == 404 and r.mimetype == "application/problem+json", name
