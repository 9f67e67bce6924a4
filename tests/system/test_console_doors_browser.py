"""The console's doors in a real headless Chromium (Debian's, driven by Playwright) against a
real HTTP server, with a hostile page served from another loopback port (same site: ports
do not make another site, so SameSite cookies travel with its requests): sign-in never
redirects off the site, the console cannot be framed, a cookie replayed after sign-out opens
nothing, a thousand wrong sign-ins throttle that address only, two accounts' routines of one
name keep their sessions apart, and the pages' own scripts and styles still run under the
Content-Security-Policy."""
from __future__ import annotations

import http.client
import os
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from routinely.routines import catalog
from routinely.records import session_log
from routinely.firing.start import Firing, fire_one
from tests.support import ADMIN_TOKEN, CHROMIUM


pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed: bash .ci/run installs it")


@pytest.fixture
def console(served_app):
    return served_app  # the app on the host's loopback (conftest)


class Hostile:
    """Another site's server on another loopback port: answers `pages[path]` (HTML, or a
    ("redirect", location) pair) and records every path asked for."""

    def __init__(self) -> None:
        self.pages: dict[str, object] = {}
        self.asked: list[str] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hostile.asked.append(self.path)
                page = hostile.pages.get(self.path.split("?")[0], "<h1>the hostile site</h1>")
                if isinstance(page, tuple):
                    self.send_response(302)
                    self.send_header("Location", page[1])
                    self.end_headers()
                    return
                body = str(page).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def hostile():
    h = Hostile()
    yield h
    h.stop()


def sign_in(browser, console: str):
    """A fresh browser context signed in with the form; returns its page."""
    page = browser.new_context().new_page()
    page.set_default_timeout(20_000)
    page.goto(console + "/login")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(console + "/")
    return page


def one_routine(conn) -> None:
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max"}], "routines": [
        {"account": "alice", "name": "r", "prompt": "p", "triggers": [{"api": {}}]}]}, time.time())


def test_sign_in_never_redirects_off_the_site(conn, console, hostile, browser):
    one_routine(conn)
    off_site = f"/\t/{hostile.url.removeprefix('http://')}/stolen"
    # the hazard is real: a site answering that path as Location sends Chromium to another site
    bouncer = Hostile()
    try:
        bouncer.pages["/bounce"] = ("redirect", off_site)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.goto(bouncer.url + "/bounce")
        assert page.url.startswith(hostile.url + "/stolen") and "/stolen" in hostile.asked
    finally:
        bouncer.stop()
    hostile.asked.clear()
    # the console: through the sign-in page's own `next`, and through a form posting one
    page.goto(console + "/login?next=" + urllib.parse.quote(off_site, safe="/"))
    assert page.locator("input[name=next]").get_attribute("value") == "/"
    page.evaluate("v => { document.querySelector('input[name=next]').value = v; }", off_site)
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(console + "/")
    assert page.locator("h1").inner_text() == "Routines" and hostile.asked == []
    page.close()


def test_another_port_cannot_frame_the_console(conn, console, hostile, browser):
    one_routine(conn)
    page = sign_in(browser, console)
    hostile.pages["/inner"] = "<p id=inner>the hostile site's own frame</p>"
    hostile.pages["/"] = (f'<iframe id=console src="{console}/" width=900 height=600></iframe>'
                          '<iframe id=own src="/inner"></iframe>')
    page.goto(hostile.url + "/")
    own = page.frame_locator("#own").locator("#inner")
    own.wait_for()  # a frame the page may show renders: the test can see framed content
    framed = page.frame(name="console")
    deadline = time.monotonic() + 20
    while framed.url == "about:blank" and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # until the console's answer arrived (the request is made, cookie and all)
    assert framed.url == "chrome-error://chromewebdata/"  # Chromium refused to show it
    assert not any(f.url.startswith(console) for f in page.frames)
    assert page.frame_locator("#console").locator("button", has_text="Pause").count() == 0
    assert "alice/r" not in framed.content()  # an error page of its own, not the console
    box = page.locator("#console").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # a click the overlay would steal
    assert catalog.load(conn).routines["alice/r"].paused is False
    page.context.close()


def test_a_cookie_replayed_after_sign_out_is_refused(conn, console, browser):
    one_routine(conn)
    page = sign_in(browser, console)
    saved = page.context.cookies()
    assert any(c["name"] == "routinely_session" and c["httpOnly"] for c in saved)
    page.locator("header button", has_text="Sign out").click()
    page.wait_for_url("**/login")
    replay = browser.new_context()
    replay.add_cookies(saved)
    again = replay.new_page()
    again.goto(console + "/")
    assert again.locator("h1").inner_text() == "Sign in"
    assert again.evaluate("fetch('/api/routines').then(r => r.status)") == 401
    page.context.close()
    replay.close()


def _post_wrong(port: int, nonce: str, token: str) -> int:
    """A sign-in posted from 127.0.0.2: another client than the browser (127.0.0.1)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    c.request("POST", "/login", urllib.parse.urlencode({"token": token, "csrf": nonce}),
              {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"routinely_login={nonce}"})
    status = c.getresponse().status
    c.close()
    return status


def test_a_thousand_wrong_sign_ins_throttle_that_client_only(conn, console, browser):
    one_routine(conn)
    port = int(console.rsplit(":", 1)[1])
    nonce = "n" * 43
    statuses = [_post_wrong(port, nonce, f"guess-{i}") for i in range(1000)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    assert _post_wrong(port, nonce, ADMIN_TOKEN) == 429  # the right token too: a throttled guess learns nothing
    page = sign_in(browser, console)  # the person at the browser is another client: not throttled
    assert page.locator("#routines tbody tr").count() == 1
    page.context.close()


def test_two_accounts_with_a_routine_of_one_name_see_only_their_own_sessions(conn, settings, console, browser):
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max"}, {"name": "bob", "plan": "max"}], "routines": [
        {"account": a, "name": "shared", "prompt": "p", "triggers": [{"api": {}}]} for a in ("alice", "bob")]}, time.time())
    made = {a: [fire_one(settings, conn, f"{a}/shared", Firing(kind="manual"))["id"] for _ in range(n)]
            for a, n in (("alice", 2), ("bob", 1))}
    page = sign_in(browser, console)
    for account in ("alice", "bob"):
        row = page.locator(f'tr[data-routine="{account}/shared"]')
        assert row.locator('td[data-label="Last session"] a').get_attribute("href") == f"/sessions/{made[account][-1]}"
    for account in ("alice", "bob"):
        page.goto(f"{console}/routines/{account}/shared")
        listed = page.locator("tr[data-session]").evaluate_all("rows => rows.map(r => r.dataset.session)")
        assert sorted(listed) == sorted(made[account])
        page.goto(console + "/sessions")
        page.select_option("select[name=routine]", f"{account}/shared")
        page.click("text=Filter")
        page.wait_for_url(re.compile(r".*routine=" + account))
        listed = page.locator("tr[data-session]").evaluate_all("rows => rows.map(r => r.dataset.session)")
        assert sorted(listed) == sorted(made[account])
    page.goto(console + "/metrics")
    text = page.inner_text("body")
    assert 'routinely_routine_sessions{routine="alice/shared"} 2.0' in text
    assert 'routinely_routine_sessions{routine="bob/shared"} 1.0' in text
    page.context.close()


def test_the_pages_own_scripts_and_styles_still_run_under_the_policy(conn, settings, console, browser):
    one_routine(conn)
    sid = fire_one(settings, conn, "alice/r", Firing(kind="manual"))["id"]
    page = sign_in(browser, console)
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    for path in ("/", "/routines/alice/r", "/sessions", "/events", "/usage", "/logout", "/routines/alice/nope"):
        page.goto(console + path)
        assert page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex", path  # styled
        if page.locator("time[datetime]").count():  # the local-time script ran
            assert page.locator("time[datetime]").first.get_attribute("title"), path
    page.goto(console + "/usage")
    assert page.evaluate("getComputedStyle(document.querySelector('svg text.cap')).fill") == "rgb(207, 34, 46)"
    # the session page: its log follower fetches the log, then refreshes the transcript in place
    page.goto(f"{console}/sessions/{sid}")
    page.evaluate("document.getElementById('usage-gateway').dataset.first = 'yes'")
    with page.expect_response(lambda r: r.url.endswith(f"/sessions/{sid}/transcript")):
        session_log.append(conn, sid, "hello from the log")
    # (Playwright's expect, not wait_for_function: that evaluates a string, which the policy refuses)
    expect(page.locator("#log")).to_contain_text("hello from the log")
    expect(page.locator("#usage-gateway:not([data-first])")).to_have_count(1)  # put in place by the script
    assert page.evaluate("getComputedStyle(document.querySelector('.usage td')).paddingRight") == "12.8px"
    assert violations == []
    page.context.close()
