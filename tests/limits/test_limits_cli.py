"""``saas limits show`` and ``saas limits reset``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from saas.cli import Context, main


def _cli(app, settings, *args):
    ctx = Context()
    ctx._settings = settings
    ctx._app = app
    return CliRunner().invoke(main, list(args), obj=ctx, catch_exceptions=False)


def test_show_and_reset(lapp, lapi, lclient, settings, steady_month):
    # steady_month: the period's counter expires on the Redis clock; the calls stay in one period
    h = lapi.auth(lapi.signup("clitenant"))
    for _ in range(3):
        assert lclient.get("/api/v1/contacts", headers=h).status_code == 200
    result = _cli(lapp, settings, "limits", "show", "clitenant", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_policy = {p["policy"]: p for p in data["policies"]}
    assert by_policy["tenant"]["remaining"] == 57 and by_policy["tenant"]["limit"] == 60
    assert by_policy["user"]["remaining"] == 27 and by_policy["user"]["limit"] == 30
    assert data["quota"]["used"] == 3 and data["quota"]["limit"] == 10000
    # showing consumed nothing
    again = json.loads(_cli(lapp, settings, "limits", "show", "clitenant", "--json").output)
    assert again["policies"] == data["policies"] and again["quota"]["used"] == 3

    table = _cli(lapp, settings, "limits", "show", "clitenant")
    assert "monthly quota" in table.output and "tenant" in table.output

    reset = _cli(lapp, settings, "limits", "reset", "clitenant")
    assert reset.exit_code == 0 and "reset 2 rate-limit keys" in reset.output
    after = json.loads(_cli(lapp, settings, "limits", "show", "clitenant", "--json").output)
    assert {p["policy"]: p["remaining"] for p in after["policies"]} == {"tenant": 60}
    assert after["quota"]["used"] == 3  # usage is billing data: kept unless --quota
    _cli(lapp, settings, "limits", "reset", "clitenant", "--quota")
    final = json.loads(_cli(lapp, settings, "limits", "show", "clitenant", "--json").output)
    assert final["quota"]["used"] == 0
    events = lclient.get("/api/v1/audit-events?action=limits.reset", headers=h).get_json()
    assert len(events) == 2


def test_unknown_tenant_is_one_line_error(lapp, settings):
    result = CliRunner().invoke(main, ["limits", "show", "nope"], obj=_ctx(lapp, settings))
    assert result.exit_code == 1 and "no tenant 'nope'" in result.output


def _ctx(app, settings):
    ctx = Context()
    ctx._settings = settings
    ctx._app = app
    return ctx


def test_billing_override_reaches_the_limiter_at_once(lapp, lapi, lclient, settings):
    h = lapi.auth(lapi.signup("override"))
    before = lclient.get("/api/v1/contacts", headers=h)
    assert '"tenant";q=60;w=60' in before.headers["RateLimit-Policy"]  # cached now
    result = _cli(
        lapp, settings, "tenants", "set-plan", "override", "pro", "--limit", "requests_per_minute=7"
    )
    assert result.exit_code == 0, result.output
    after = lclient.get("/api/v1/contacts", headers=h)
    assert '"tenant";q=7;w=60' in after.headers["RateLimit-Policy"]
