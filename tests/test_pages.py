"""The session page and the login form."""
from __future__ import annotations

from app import create_app
from app.auth import COOKIE
from routinely.cli import fire_one
from routinely.start import Firing
from tests.support import redis_snapshot
from tests.test_receiver import apply


def test_the_session_url_serves_its_page(client, conn, settings):
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    page = client.get(f"/sessions/{s['id']}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.data.decode()
    assert s["id"] in html and "queued" in html and f"/api/sessions/{s['id']}/log" in html
    assert client.get("/sessions/session_nope").status_code == 404


def test_pages_need_the_admin_token_when_set(settings, conn):
    app = create_app(settings.with_(admin_token="tok"))
    client = app.test_client()
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    before = redis_snapshot(conn)
    resp = client.get(f"/sessions/{s['id']}")
    assert resp.status_code == 303 and resp.headers["Location"] == f"/login?next=/sessions/{s['id']}"
    bad = client.post("/login", data={"token": "wrong", "next": f"/sessions/{s['id']}"})
    assert bad.status_code == 401 and "not ROUTINELY_ADMIN_TOKEN" in bad.data.decode()
    assert redis_snapshot(conn) == before
    ok = client.post("/login", data={"token": "tok", "next": f"/sessions/{s['id']}"})
    assert ok.status_code == 303 and ok.headers["Location"] == f"/sessions/{s['id']}"
    assert "HttpOnly" in ok.headers["Set-Cookie"]
    assert client.get(f"/sessions/{s['id']}").status_code == 200  # the cookie now opens pages and the API
    assert client.get("/api/sessions").status_code == 200
    other = app.test_client()
    assert other.get(f"/sessions/{s['id']}", headers={"Authorization": "Bearer tok"}).status_code == 200
    evil = other.post("/login", data={"token": "tok", "next": "//evil.example/x"})
    assert evil.headers["Location"] == "/"
    other.set_cookie(COOKIE, "forged")
    assert other.get("/api/sessions").status_code == 401


def test_the_session_page_lists_the_connectors_actions_and_links_only_web_urls(client, conn, settings):
    from routinely import actions

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
