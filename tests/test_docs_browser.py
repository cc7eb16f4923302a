"""/docs in a real browser (Debian's chromium through Playwright): Swagger UI renders the API
under the page's Content-Security-Policy, with no violation and no request leaving the origin."""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from saas import create_app
from saas.db import Database
from tests.peers import chromium_available, launch_chromium


@pytest.fixture()
def live_docs(settings, engine, redis_client):
    """The app on a free loopback port (werkzeug, a thread); /docs and /openapi.json only read."""
    app = create_app(settings, database=Database(engine), redis=redis_client)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()
    thread.join(timeout=5)


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium or playwright is not installed")
def test_swagger_ui_renders_under_its_csp_from_this_origin_only(live_docs):
    from playwright.sync_api import sync_playwright

    base, app = live_docs
    title = app.config["API_TITLE"]
    requests: list[str] = []
    failed: list[str] = []
    console: list[str] = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            # every CSP violation the page sees, recorded before any script of the page runs
            page.add_init_script(
                "window.__violations = [];"
                "document.addEventListener('securitypolicyviolation', e =>"
                " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            # the DOM is enough: the selectors below wait for Swagger UI itself (a loaded machine
            # can take long over the 1 MB bundle's "load" event)
            response = page.goto(f"{base}/docs", wait_until="domcontentloaded", timeout=60_000)
            assert response is not None and response.status == 200
            assert "script-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_selector(".info .title", timeout=60_000)
            assert title in page.text_content(".info .title")
            page.wait_for_selector(".opblock", timeout=30_000)  # the operations are listed
            assert page.locator(".opblock").count() >= 40
            violations = page.evaluate("window.__violations")
        finally:
            browser.close()
    assert violations == []
    assert not [line for line in console if "Content Security Policy" in line or line.startswith("error")]
    assert failed == []
    assert requests and all(url.startswith(base + "/") for url in requests), requests
    assert f"{base}/openapi.json" in requests and f"{base}/docs/assets/swagger-ui-bundle.js" in requests
