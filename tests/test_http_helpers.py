"""saas.http: werkzeug's header answers, without its exception path."""

from __future__ import annotations

from flask import Flask
from werkzeug.datastructures import Headers

from saas.http import has_header, request_header, set_default_header


def test_header_helpers_answer_as_werkzeug_does():
    headers = Headers([("Cache-Control", "no-cache"), ("X-A", "1")])
    for name in ("cache-control", "CACHE-CONTROL", "X-A", "x-b", "ETag"):
        assert has_header(headers, name) == (name in headers)
    set_default_header(headers, "cache-control", "private, no-store")
    set_default_header(headers, "X-Content-Type-Options", "nosniff")
    assert headers.getlist("Cache-Control") == ["no-cache"]  # kept, not replaced nor doubled
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_request_header_reads_the_environ():
    app = Flask("t")
    with app.test_request_context(
        "/", method="POST", data=b"{}", headers={"X-Request-ID": "abc", "Content-Type": "application/json"}
    ):
        assert request_header("X-Request-ID") == "abc" == request_header("x-request-id")
        assert request_header("Content-Type") == "application/json"
        assert request_header("Content-Length") == "2"
        assert request_header("If-Match") == "" and request_header("If-Match", "-") == "-"
