"""The console in a real headless Chromium (Debian's, driven by Playwright), against a real
HTTP server and a real RQ worker: sign in, see and run routines, pause, read why a delivery
did not fire, tokens, cancel, sign out. Screenshots of every page at 1280 and 390 px go to
$TMPDIR/routinely-console-screenshots."""
from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from routinely.routines import catalog
from tests.support import ADMIN_TOKEN, AGENTS_DIR, CHROMIUM, body_of, delivery_headers, fixture, start_worker


SHOTS = Path(tempfile.gettempdir()) / "routinely-console-screenshots"
REPO = "octo/api"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed: bash .ci/run installs it")


@pytest.fixture
def server(served_app):
    return served_app  # the app on the host's loopback (conftest)


def shoot(page, name: str) -> None:
    """The page at 1280 and at 390 px wide, whole."""
    SHOTS.mkdir(exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def deliver(base: str, title: str) -> str:
    payload = fixture("pull_request.opened.json")
    payload["repository"]["full_name"] = REPO
    payload["pull_request"]["title"] = title
    body = body_of(payload)
    headers = delivery_headers("pull_request", body)
    req = urllib.request.Request(base + "/webhooks/github", data=body, headers=headers, method="POST")
    assert urllib.request.urlopen(req).status == 202
    return headers["X-GitHub-Delivery"]


def test_a_person_with_a_browser(conn, worker_env, remotes, server, browser, tmp_path):
    remotes.create(REPO)
    agent = f"{sys.executable} {AGENTS_DIR / 'console.py'}"
    base_routine = {"account": "alice", "prompt": "Say hello.", "repositories": [REPO]}
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max", "timezone": "Asia/Tokyo"}], "routines": [
        {**base_routine, "name": "greeter", "triggers": [{"api": {}}, {"schedule": {"preset": "weekdays", "time": "09:00"}}]},
        {**base_routine, "name": "slow", "environment": {"env": {"NAP": "120"}}, "triggers": [{"api": {}}]},
        {**base_routine, "name": "hotfixes", "triggers": [{"github": {"events": ["pull_request.opened"], "filters": [
            {"field": "title", "op": "matches_regex", "value": ".*hotfix.*"}]}}]},
        {**base_routine, "name": "watcher", "triggers": [{"github": {"events": ["pull_request.synchronize"]}}]},
    ]}, time.time())
    worker = start_worker({**worker_env, "ROUTINELY_AGENT": agent})
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    try:
        # sign in
        page.goto(server + "/")
        assert page.locator("h1").inner_text() == "Sign in"
        shoot(page, "login")
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        assert "not ROUTINELY_ADMIN_TOKEN" in page.inner_text("main")
        page.fill("input[name=token]", ADMIN_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(server + "/")
        # see the routines
        rows = page.locator("#routines tbody tr")
        assert rows.count() == 4
        greeter = page.locator('tr[data-routine="alice/greeter"]')
        assert "weekdays at 09:00 (Asia/Tokyo)" in greeter.inner_text() and "next run" in greeter.inner_text()
        shoot(page, "routines")

        # run one now and watch its session reach succeeded with the agent's output
        greeter.locator("input[name=text]").fill("from the browser")
        greeter.locator("button", has_text="Run now").click()
        page.wait_for_url("**/sessions/session_*")
        expect(page.locator("#status")).to_have_text("succeeded", timeout=90_000)
        expect(page.locator("#log")).to_contain_text("agent: done")
        assert "hello from the agent (from the browser)" in page.inner_text("#log")
        assert page.locator("#cancel").count() == 0
        expect(page.locator("#sandbox")).to_be_visible()  # this run is unsandboxed: it says so
        shoot(page, "session-succeeded")

        # pause, and see a delivery recorded as skipped
        page.goto(server + "/")
        page.locator('tr[data-routine="alice/watcher"] button', has_text="Pause").click()
        page.wait_for_url(server + "/")
        assert "paused" in page.locator('tr[data-routine="alice/watcher"]').inner_text()
        payload = fixture("pull_request.opened.json")
        payload.update(action="synchronize")
        payload["repository"]["full_name"] = REPO
        body = body_of(payload)
        req = urllib.request.Request(server + "/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
        assert urllib.request.urlopen(req).status == 202

        # the events page: skipped, and why a delivery started nothing
        delivery = deliver(server, "Fix login")
        page.goto(server + "/events")
        assert "skipped watcher: paused" in page.inner_text("#events")
        row = page.locator(f'tr[data-delivery="{delivery}"]')
        row.locator("summary").click()
        assert 'title: "Fix login" does not match regex ".*hotfix.*"' in row.locator("details").inner_text()
        shoot(page, "events")

        # create a token (shown once) and revoke it
        page.goto(server + "/routines/alice/greeter")
        page.click("text=Create token")
        token = page.inner_text("#token-value")
        assert token.startswith("rtn_") and "shown once" in page.inner_text("#new-token")
        shoot(page, "routine-new-token")
        page.goto(server + "/routines/alice/greeter")
        assert token not in page.content()
        page.locator("#tokens button", has_text="Revoke").click()
        page.wait_for_url(server + "/routines/alice/greeter")
        assert "revoked" in page.inner_text("#tokens") and page.locator("#tokens button").count() == 0
        shoot(page, "routine")

        # cancel a running session
        page.goto(server + "/")
        page.locator('tr[data-routine="alice/slow"] button', has_text="Run now").click()
        page.wait_for_url("**/sessions/session_*")
        expect(page.locator("#log")).to_contain_text("agent: napping", timeout=90_000)
        assert page.inner_text("#status") == "running"
        shoot(page, "session-running")
        page.click("#cancel button")
        expect(page.locator("#status")).to_have_text("canceled", timeout=30_000)
        assert "canceled" in page.inner_text("#reason")

        for path, name in (("/sessions", "sessions"), ("/sessions?status=canceled", "sessions-filtered"), ("/usage", "usage")):
            page.goto(server + path)
            shoot(page, name)
        assert page.locator("svg rect").count() >= 30  # a bar per day

        # sign out and be refused
        page.locator("header button", has_text="Sign out").click()
        page.wait_for_url("**/login")
        page.goto(server + "/")
        assert page.locator("h1").inner_text() == "Sign in"
        status = page.evaluate("fetch('/api/routines').then(r => r.status)")
        assert status == 401
    finally:
        page.close()
        worker.terminate()
        worker.wait(90)  # the shutdown grace (10 s) and RQ joining its Redis listener (up to 60 s)
