"""The console's pages and the management API over the test client: sign-in, CSRF, every
page, steering routines, and every refusal leaving the store as it was."""
from __future__ import annotations

import html
import re
import time

import pytest

from app import create_app
from routinely.routines import catalog
from routinely import when
from routinely.firing.start import Firing, fire_one
from tests.support import ADMIN_TOKEN, apply, body_of, delivery_headers, fixture, gh, redis_snapshot


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def signed_in(app):
    client = app.test_client()
    page = client.get("/login").data.decode()
    resp = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/", "csrf": csrf_of(page)})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    return client, csrf_of(client.get("/").data.decode())


def test_the_session_url_serves_its_page(client, conn, settings):
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    page = client.get(f"/sessions/{s['id']}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.data.decode()
    assert s["id"] in html and "queued" in html and f"/api/sessions/{s['id']}/log" in html
    assert "Cancel session" in html and "metered</dt><dd>no" in html  # booleans as words
    assert client.get("/sessions/session_nope").status_code == 404


def test_no_open_mode_without_an_admin_token(settings, conn):
    app = create_app(settings.with_(admin_token=None))
    client = app.test_client()
    for path in ("/", "/api/routines", "/metrics", "/api/sessions"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer "}).status_code == 401
    page = client.get("/login").data.decode()
    assert client.post("/login", data={"token": "", "csrf": csrf_of(page)}).status_code == 401


def test_sign_in_sets_a_signed_expiring_cookie_never_the_token(settings, conn):
    app = create_app(settings)
    client = app.test_client()
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    before = redis_snapshot(conn)
    resp = client.get(f"/sessions/{s['id']}")
    assert resp.status_code == 401 and 'value="/sessions/' in resp.data.decode()  # the sign-in form, back to here
    page = client.get("/login").data.decode()
    bad = client.post("/login", data={"token": "wrong", "next": "/", "csrf": csrf_of(page)})
    assert bad.status_code == 401 and "not ROUTINELY_ADMIN_TOKEN" in bad.data.decode()
    stale = app.test_client().post("/login", data={"token": ADMIN_TOKEN, "next": "/", "csrf": "forged"})
    assert stale.status_code == 403  # login CSRF: a form posted from elsewhere
    # only the failed sign-in is counted (app.auth throttles per address)
    assert {k: v for k, v in redis_snapshot(conn).items() if not k.startswith(b"rly:console:failures:")} == before
    ok = client.post("/login", data={"token": ADMIN_TOKEN, "next": f"/sessions/{s['id']}", "csrf": csrf_of(page)})
    assert ok.status_code == 303 and ok.headers["Location"] == f"/sessions/{s['id']}"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Expires=" in cookie and ADMIN_TOKEN not in cookie
    assert client.get(f"/sessions/{s['id']}").status_code == 200  # the cookie opens pages and the API
    assert client.get("/api/sessions").status_code == 200
    other = app.test_client()
    assert other.get(f"/sessions/{s['id']}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    evil = other.post("/login", data={"token": ADMIN_TOKEN, "next": "//evil.example/x", "csrf": csrf_of(other.get("/login").data.decode())})
    assert evil.headers["Location"] == "/"
    forged = app.test_client()
    forged.set_cookie("routinely_session", "eyJhZG1pbiI6dHJ1ZX0.forged.sig")
    assert forged.get("/api/sessions").status_code == 401
    # a cookie signed for another admin token opens nothing here
    elsewhere = create_app(settings.with_(admin_token="another-token"))
    assert elsewhere.test_client(use_cookies=True).get("/", headers={"Cookie": cookie.split(";")[0]}).status_code == 401


def test_sign_in_link_and_sign_out(settings, conn):
    from routinely.sign_in import link as sign_in_link

    app = create_app(settings)
    client = app.test_client()
    assert client.get(f"/login?token={ADMIN_TOKEN}").status_code == 400  # never the token in a URL
    assert client.get("/login?code=wrong").status_code == 401
    resp = client.get(sign_in_link(conn, settings.public_url).removeprefix(settings.public_url) + "&next=/usage")
    assert resp.status_code == 303 and resp.headers["Location"] == "/usage"
    assert client.get("/usage").status_code == 200
    csrf = csrf_of(client.get("/").data.decode())
    assert client.post("/logout", data={}).status_code == 403  # CSRF on sign-out too
    assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/").status_code == 401 and client.get("/api/routines").status_code == 401


def test_every_page_renders(settings, conn, client):
    apply(conn, {"name": "r", "triggers": [{"api": {}}, gh(["pull_request.opened"], {"field": "title", "op": "matches_regex", "value": ".*hotfix.*"}),
                                           {"schedule": {"preset": "daily", "time": "09:00", "timezone": "Asia/Tokyo"}}]})
    body = body_of(fixture("pull_request.opened.json"))
    client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    fire_one(settings, conn, "r", Firing(kind="manual"))
    for path in ("/", "/routines/alice/r", "/sessions", "/sessions?status=queued&kind=manual&routine=r", "/events", "/usage", "/logout"):
        resp = client.get(path)
        assert resp.status_code == 200, path
    home = html.unescape(client.get("/").data.decode())
    assert 'GitHub pull_request.opened when title matches regex ".*hotfix.*"' in home
    assert "schedule: every day at 09:00 (Asia/Tokyo)" in home and "1 / 25" in home
    events = html.unescape(client.get("/events").data.decode())
    assert "does not match regex" in events and "Why nothing started" in events
    assert 'manual · <a href="/routines/alice/r">alice/r</a>' not in events and '<a href="/routines/alice/r">alice/r</a>' in events
    assert client.get("/routines/alice/nope").status_code == 404


def test_a_routine_dropping_now_says_so_until_its_window_reopens(client, conn, settings):
    apply(conn, {"name": "r", "triggers": [{"api": {}}], "rate_limit": {"events": 1, "per_seconds": 3600}})
    assert client.post("/api/routines/alice/r/run").status_code == 201
    dropped = client.post("/api/routines/alice/r/run")
    assert dropped.status_code == 429 and 0 < int(dropped.headers["Retry-After"]) <= 3600
    row = client.get("/api/routines").get_json()[0]
    assert row["dropping"] is True and row["drops"]["routine_rate_limit"] == 1 and row["runs_today"] == 1
    home = client.get("/").data.decode()
    assert "dropping now" in home and "routine rate limit" in home
    event = client.get("/api/events").get_json()[0]
    assert event["dropped"][0]["reason"] == "routine_rate_limit"
    assert re.search(r"routine rate limit \(it opens again in \d+ (min|s)", html.unescape(client.get("/events").data.decode()))
    explained = client.get(f"/api/events/{event['id']}").get_json()["explanation"]
    assert explained["summary"] == "matched, then dropped: routine_rate_limit"
    # the limit raised: the page follows the configuration at once, not the old drop's window
    apply(conn, {"name": "r", "triggers": [{"api": {}}], "rate_limit": {"events": 5, "per_seconds": 3600}})
    assert client.get("/api/routines").get_json()[0]["dropping"] is False
    assert "dropping now" not in client.get("/").data.decode()


def test_steering_from_pages_needs_csrf_and_refusals_store_nothing(settings, conn):
    app = create_app(settings)
    apply(conn, {"name": "r", "triggers": [{"api": {}}]}, {"name": "quiet", "triggers": [gh(["pull_request"])]})
    client, csrf = signed_in(app)
    before = redis_snapshot(conn)
    for path in ("/routines/alice/r/run", "/routines/alice/r/pause", "/routines/alice/r/tokens", "/sessions/x/cancel",
                 "/routines/alice/r/tokens/trig_x/revoke"):
        assert client.post(path, data={}).status_code == 403, path
        assert client.post(path, data={"csrf": "wrong"}).status_code == 403, path
    assert client.post("/routines/alice/nope/run", data={"csrf": csrf}).status_code == 404
    assert client.post("/routines/alice/nope/pause", data={"csrf": csrf}).status_code == 404
    assert client.post("/routines/alice/quiet/tokens", data={"csrf": csrf}).status_code == 400  # no api trigger
    assert client.post("/routines/alice/r/tokens/trig_nope/revoke", data={"csrf": csrf}).status_code == 404
    assert client.post("/sessions/session_nope/cancel", data={"csrf": csrf}).status_code == 404
    assert redis_snapshot(conn) == before
    ran = client.post("/routines/alice/r/run", data={"csrf": csrf, "text": "from the page"})
    assert ran.status_code == 303 and ran.headers["Location"].startswith("/sessions/session_")
    s = client.get("/api" + ran.headers["Location"]).get_json()
    assert s["trigger"] == {"kind": "manual", "text": "from the page"}
    assert client.post("/routines/alice/r/pause", data={"csrf": csrf}).status_code == 303
    assert client.get("/api/routines/alice/r").get_json()["paused"] is True
    before = redis_snapshot(conn)
    assert client.post("/routines/alice/r/run", data={"csrf": csrf}).status_code == 400  # paused
    assert redis_snapshot(conn) == before
    made = client.post("/routines/alice/r/tokens", data={"csrf": csrf})
    assert made.status_code == 201 and "shown once" in made.data.decode()
    token = re.search(r'id="token-value">([^<]+)<', made.data.decode()).group(1)
    assert token.startswith("rtn_") and token not in client.get("/routines/alice/r").data.decode()


def test_the_management_api(client, conn, settings):
    apply(conn, {"name": "r", "triggers": [{"api": {}}, {"schedule": {"preset": "hourly", "minute": 5}}]},
          {"name": "quiet", "triggers": [gh(["pull_request"])]})
    one = client.get("/api/routines/alice/r").get_json()
    assert one["name"] == "r" and one["account"] == "alice" and one["definition"]["name"] == "r" and one["tokens"] == []
    assert one["next_run_at"] and one["runs_today"] == 0 and one["daily_cap"] == 25
    assert [r["name"] for r in client.get("/api/schedules").get_json()] == ["r"]
    ran = client.post("/api/routines/alice/r/run", json={"text": "hi"})
    assert ran.status_code == 201 and ran.get_json()["trigger"]["text"] == "hi"
    last = client.get("/api/routines/alice/r").get_json()["last_session"]
    assert last == {"id": ran.get_json()["id"], "status": "queued", "created_at": ran.get_json()["created_at"]}
    assert client.get("/api/routines/alice/quiet").get_json()["last_session"] is None
    event = client.get("/api/events").get_json()[0]
    assert event["kind"] == "manual" and event["routine"] == "alice/r"  # the event names its routine
    made = client.post("/api/routines/alice/r/tokens").get_json()
    assert made["trigger_id"].startswith("trig_") and made["token"].startswith("rtn_")
    fired = client.post(f"/v1/claude_code/routines/{made['trigger_id']}/fire", json={"text": "x"}, headers={
        "Authorization": f"Bearer {made['token']}", "anthropic-version": "2023-06-01",
        "anthropic-beta": "experimental-cc-routine-2026-04-01"})
    assert fired.status_code == 200
    assert client.get("/api/events").get_json()[0]["routine"] == "alice/r"  # an api firing names its routine too
    listed = client.get("/api/routines/alice/r/tokens").get_json()
    assert [{k: row[k] for k in ("trigger_id", "name", "account", "live")} for row in listed] == [
        {"trigger_id": made["trigger_id"], "name": "r", "account": "alice", "live": True}]
    assert when.parse_iso(listed[0]["created_at"]) <= when.parse_iso(listed[0]["last_used_at"])  # it fired just now
    assert client.delete(f"/api/routines/alice/r/tokens/{made['trigger_id']}").get_json() == {"revoked": [made["trigger_id"]]}
    assert client.get("/api/routines/alice/r/tokens").get_json()[0]["live"] is False
    assert client.post("/api/routines/alice/r/pause").get_json() == {"name": "r", "account": "alice", "paused": True}
    assert client.post("/api/routines/alice/r/resume").get_json()["paused"] is False
    usage = client.get("/api/usage").get_json()
    assert usage[0]["account"] == "alice" and len(usage[0]["days"]) == 30 and usage[0]["days"][-1]["runs"] == 2


@pytest.mark.parametrize("method,path,kwargs,status", [
    ("get", "/api/routines/alice/nope", {}, 404),
    ("post", "/api/routines/alice/nope/run", {}, 404),
    ("post", "/api/routines/alice/r/run", {"data": "not json", "content_type": "application/json"}, 400),
    ("post", "/api/routines/alice/r/run", {"json": ["a list"]}, 400),
    ("post", "/api/routines/alice/r/run", {"json": {"text": 5}}, 400),
    ("post", "/api/routines/alice/nope/pause", {}, 404),
    ("post", "/api/routines/alice/nope/resume", {}, 404),
    ("get", "/api/routines/alice/nope/tokens", {}, 404),
    ("post", "/api/routines/alice/quiet/tokens", {}, 400),
    ("delete", "/api/routines/alice/r/tokens/trig_nope", {}, 404),
    ("delete", "/api/routines/alice/r/tokens/not-a-trigger", {}, 404),
    ("get", "/api/events/nope", {}, 404),
    ("get", "/api/sessions?status=lost", {}, 400),
    ("get", "/api/sessions?kind=email", {}, 400),
    ("get", "/api/sessions?offset=-1", {}, 400),
    ("post", "/api/sessions/session_nope/cancel", {}, 404),
])
def test_api_refusals_store_nothing(client, conn, method, path, kwargs, status):
    apply(conn, {"name": "r", "triggers": [{"api": {}}]}, {"name": "quiet", "triggers": [gh(["pull_request"])]})
    before = redis_snapshot(conn)
    assert getattr(client, method)(path, **kwargs).status_code == status
    assert redis_snapshot(conn) == before


def test_paused_run_and_cookie_changes_without_csrf_are_refused(settings, conn, client):
    apply(conn, {"name": "r", "triggers": [{"api": {}}], "paused": True})
    cookie_client, csrf = signed_in(create_app(settings))  # a sign-in is stored: before the snapshot
    before = redis_snapshot(conn)
    assert client.post("/api/routines/alice/r/run").status_code == 400
    assert cookie_client.post("/api/routines/alice/r/resume").status_code == 403  # cookie without CSRF
    assert redis_snapshot(conn) == before
    assert cookie_client.post("/api/routines/alice/r/resume", headers={"X-CSRF-Token": csrf}).status_code == 200


def test_metrics_count_at_the_door_and_read_the_store(client, conn, settings):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])], "rate_limit": {"events": 1, "per_seconds": 3600}})
    body = body_of(fixture("pull_request.opened.json"))
    for _ in range(2):
        client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    headers = delivery_headers("pull_request", body)
    client.post("/webhooks/github", data=body, headers=headers)
    client.post("/webhooks/github", data=body, headers=headers)  # a duplicate
    client.post("/webhooks/github", data=body, headers={**headers, "X-Hub-Signature-256": "sha256=00"})
    text = client.get("/metrics").data.decode()
    assert 'routinely_deliveries_total{event="pull_request",outcome="accepted"}' in text
    assert 'routinely_deliveries_total{event="pull_request",outcome="duplicate"}' in text
    assert 'routinely_deliveries_total{event="unverified",outcome="refused_signature"}' in text
    assert 'routinely_drops_total{reason="routine_rate_limit",routine="alice/r"} 2.0' in text
    assert 'routinely_sessions_24h{status="queued"} 1.0' in text
    assert "routinely_queue_depth 1.0" in text and "routinely_ingest_seconds_bucket" in text
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_usage_counts_runs_per_local_day_against_the_cap(client, conn, settings):
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from tests.support import Clock

    apply(conn, {"name": "r", "triggers": [{"api": {}}]},
          account={"name": "alice", "plan": "pro", "extra_usage": True, "timezone": "Asia/Tokyo",
                   "rate_limit": {"events": 1000, "per_seconds": 3600}})
    now = settings.clock()
    earlier = settings.with_(clock=Clock(now - 3 * 86_400))
    for _ in range(2):
        fire_one(earlier, conn, "r", Firing(kind="manual"))
    for _ in range(6):  # the pro cap is 5: the sixth runs metered
        fire_one(settings, conn, "r", Firing(kind="manual"))
    alice = client.get("/api/usage").get_json()[0]
    today = datetime.fromtimestamp(now, ZoneInfo("Asia/Tokyo")).date()
    assert alice["daily_cap"] == 5 and alice["runs"] == 8 and alice["metered"] == 1
    assert alice["days"][-1] == {"date": today.isoformat(), "runs": 6, "metered": 1}
    assert alice["days"][-4] == {"date": (today - timedelta(days=3)).isoformat(), "runs": 2, "metered": 0}
    page = html.unescape(client.get("/usage").data.decode())
    assert page.count("<rect") >= 30 and f"{today.isoformat()}: 6 run(s), 1 metered" in page
    assert "metered runs</dt><dd>1" in page


def test_sessions_filter_by_status_and_kind_and_page(client, conn, settings):
    from tests.support import Clock

    apply(conn, {"name": "r", "triggers": [{"api": {}}]}, {"name": "s", "triggers": [{"api": {}}]})
    clock = Clock(settings.clock())
    ticking = settings.with_(clock=clock)

    def fire(name, kind):
        clock.t += 1  # a second apart: newest-first order is certain
        return fire_one(ticking, conn, name, Firing(kind=kind))["id"]

    made = [fire("r", "manual") for _ in range(4)] + [fire("s", "api") for _ in range(3)]
    for sid in made[:2] + made[4:5]:
        assert client.post(f"/api/sessions/{sid}/cancel").get_json()["result"] == "canceled"
    ids = lambda q: [s["id"] for s in client.get(f"/api/sessions?{q}").get_json()]  # noqa: E731
    assert ids("status=canceled") == [made[4], made[1], made[0]]
    assert ids("status=canceled&kind=manual") == [made[1], made[0]]
    assert ids("status=queued&routine=s") == [made[6], made[5]]
    assert ids("kind=api&limit=2&offset=1") == [made[5], made[4]]
    assert ids("limit=3&offset=5") == [made[1], made[0]]
    page = client.get("/sessions?status=canceled&kind=manual").data.decode()
    assert made[0] in page and made[1] in page and made[2] not in page and made[4] not in page


def test_fields_since_reads_every_session_in_chunks(conn, settings, monkeypatch):
    from routinely.records import sessions

    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    made = [fire_one(settings, conn, "r", Firing(kind="manual"))["id"] for _ in range(5)]
    monkeypatch.setattr(sessions, "FIELDS_CHUNK", 2)
    rows = sessions.fields_since(conn, settings.clock() - 60, "id", "status")
    assert sorted(r[0].decode() for r in rows) == sorted(made) and {r[1] for r in rows} == {b"queued"}
    assert sessions.fields_since(conn, settings.clock() + 60, "id") == []


def test_a_session_cookie_expires_after_its_lifetime(settings, conn):
    from app.auth import SESSION_COOKIE
    from routinely.storage import keys

    client, _ = signed_in(create_app(settings))
    record = keys.console_session(keys.digest(client.get_cookie(SESSION_COOKIE).value))
    assert 12 * 3600 - 60 < conn.ttl(record) <= 12 * 3600  # Redis ends the session after its lifetime
    assert client.get("/api/routines").status_code == 200
    conn.delete(record)  # as its TTL does
    assert client.get("/api/routines").status_code == 401


def test_the_session_page_lists_the_connectors_actions_and_links_only_web_urls(client, conn, settings):
    from routinely.records import actions

    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    actions.record(conn, s["id"], {"tool": "add_issue_comment", "repo": "octo/api", "number": 5, "status": "ok",
                                   "url": "https://github.example/octo/api/issues/5#issuecomment-1", "at": "2026-12-01T10:00:00.000Z"})
    actions.record(conn, s["id"], {"tool": "create_pull_request", "repo": "octo/api", "number": None, "status": "ok",
                                   "url": "javascript:alert(1)", "at": "2026-12-01T10:00:01.000Z"})
    actions.record(conn, s["id"], {"tool": "create_issue", "repo": "octo/api", "number": None, "status": "refused",
                                   "url": None, "at": "2026-12-01T10:00:02.000Z"})
    actions.count_read(conn, s["id"])
    html = client.get(f"/sessions/{s['id']}").data.decode()
    assert 'href="https://github.example/octo/api/issues/5#issuecomment-1"' in html
    assert 'href="javascript:' not in html and "create_issue</code> octo/api · refused" in html
    assert "(1 reads)" in html
    got = client.get(f"/api/sessions/{s['id']}").get_json()
    assert [a["status"] for a in got["actions"]] == ["ok", "ok", "refused"] and got["github_reads"] == 1


def test_the_events_page_is_paged(client, conn, settings, monkeypatch):
    from app import pages

    monkeypatch.setattr(pages, "EVENTS_PAGE", 2)
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    made = [fire_one(settings, conn, "r", Firing(kind="manual"))["id"] for _ in range(3)]
    first, second = client.get("/events").data.decode(), client.get("/events?page=2").data.decode()
    assert first.count('<tr data-event=') == 2 and 'href="?page=2">Older' in first
    assert second.count('<tr data-event=') == 1 and 'href="?page=1">Newer' in second and "Older" not in second
    assert sum(sid in first + second for sid in made) == 3


def test_raising_the_daily_cap_ends_dropping_now_at_once(client, conn):
    def configure(plan: str) -> None:
        catalog.apply(conn, {"accounts": [{"name": "me", "plan": plan}],
                             "routines": [{"name": "r", "account": "me", "prompt": "p", "triggers": [{"api": {}}]}]}, time.time())

    configure("pro")
    for _ in range(5):
        assert client.post("/api/routines/me/r/run").status_code == 201
    assert client.post("/api/routines/me/r/run").status_code == 429
    assert client.get("/api/routines").get_json()[0]["dropping"] is True
    configure("max")  # 15 a day: the sixth run fits now
    assert client.get("/api/routines").get_json()[0]["dropping"] is False
    assert client.post("/api/routines/me/r/run").status_code == 201
