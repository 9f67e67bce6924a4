"""Console rows with context (issue #31) in a real headless Chromium (Debian's, driven by
Playwright) against a real HTTP server: session rows show their duration and the pull request
or API text that started them, the session page folds the prompt, tokens show their dates, the
usage page adds tokens and dollars up — and at 390 px no table is wider than its box. Screenshots
at 1280 and 390 px go to $TMPDIR/routinely-console-rows-screenshots."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from routinely.routines import api_tokens, catalog
from routinely.records import model_usage, sessions
from routinely.firing.start import Firing, fire_one
from tests.support import ADMIN_TOKEN, CHROMIUM, MULTILINE_PROMPT, body_of, delivery_headers, fixture


SHOTS = Path(tempfile.gettempdir()) / "routinely-console-rows-screenshots"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed: bash .ci/run installs it")

# every table no wider than the box it sits in, and the page no wider than the window
OVERFLOW = """() => {
  const tables = [...document.querySelectorAll("table")].map(t => ({
    id: t.id || t.className, width: t.scrollWidth, box: t.parentElement.clientWidth}));
  return {page: document.documentElement.scrollWidth, window: window.innerWidth,
          cut: tables.filter(t => t.width > t.box), tables: tables.length};
}"""


def sign_in(browser, console: str):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(20_000)
    page.goto(console + "/login")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(console + "/")
    return page


def fits_at_390(page, name: str) -> None:
    """The page at 390 px: nothing cut; screenshots at both widths."""
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(50)
    seen = page.evaluate(OVERFLOW)
    page.screenshot(path=str(SHOTS / f"{name}-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    assert seen["tables"] > 0, name
    assert seen["page"] <= 390 and not seen["cut"], (name, seen)


def test_rows_with_context_and_usage_at_two_widths(conn, settings, client, served_app, browser):
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max", "timezone": "Europe/Paris"}], "routines": [
        {"name": "reviewer", "account": "alice", "prompt": MULTILINE_PROMPT, "repositories": ["octo/api"],
         "triggers": [{"github": {"events": ["pull_request.opened"]}}, {"api": {}}]},
        {"name": "nightly-dependency-updates-for-every-repository", "account": "alice", "prompt": "p",
         "triggers": [{"api": {}}]}]}, time.time())
    payload = fixture("pull_request.opened.json")
    payload["repository"]["full_name"] = "octo/api"
    payload["pull_request"]["title"] = "Speed up the importer by caching parsed manifests between runs"
    body = body_of(payload)
    assert client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body)).status_code == 202
    pr_session = client.get("/api/sessions").get_json()[0]["id"]
    sessions.update(conn, pr_session, status="succeeded", started_at="2026-01-01T10:00:00.000Z",
                    finished_at="2026-01-01T10:04:05.000Z")
    trigger, token = api_tokens.create(conn, catalog.load(conn).find("reviewer"))
    fired = client.post(f"/v1/claude_code/routines/{trigger}/fire",
                        json={"text": "Alert: disk full on db-1\n" + "trace line with a_very_long_identifier_without_spaces\n" * 30},
                        headers={"Authorization": f"Bearer {token}", "anthropic-version": "2023-06-01",
                                 "anthropic-beta": "experimental-cc-routine-2026-04-01"})
    api_session = fired.get_json()["claude_code_session_id"]
    sessions.update(conn, api_session, status="running", started_at=sessions_iso(time.time() - 95))
    fire_one(settings, conn, "alice/nightly-dependency-updates-for-every-repository", Firing(kind="manual"))
    now = time.time()
    for routine, model, cost in (("reviewer", "claude-sonnet-4-5", 0.42), ("reviewer", "homebrew-model", None),
                                 ("nightly-dependency-updates-for-every-repository", "gpt-5-mini", 0.0123)):
        model_usage.record(conn, "session_u", f"alice/{routine}", "alice", "Europe/Paris", now, model_usage.empty(),
                           model, {"input_tokens": 123_456, "output_tokens": 7_890}, cost)

    page = sign_in(browser, served_app)
    try:
        fits_at_390(page, "routines")

        page.goto(served_app + "/sessions")
        pr_row = page.locator(f'tr[data-session="{pr_session}"]')
        assert "4 min 5 s" in pr_row.locator("td.duration").inner_text()
        link = pr_row.locator("td.about a.subject")
        assert link.inner_text().startswith("pull request #")
        assert link.get_attribute("href").startswith("https://github.com/")
        assert "Speed up the importer" in pr_row.locator("td.about").inner_text()
        api_row = page.locator(f'tr[data-session="{api_session}"]')
        assert api_row.locator("td.duration").inner_text().startswith("running for 1 min")
        folded = api_row.locator("td.about details")
        assert not folded.evaluate("d => d.open") and "trace line" not in folded.locator("summary").inner_text()
        folded.locator("summary").click()
        assert "a_very_long_identifier_without_spaces" in folded.inner_text()
        fits_at_390(page, "sessions")

        page.goto(f"{served_app}/sessions/{pr_session}")
        assert page.locator("#subject a.subject").inner_text().startswith("pull request #")
        assert page.locator("#duration").inner_text() == "4 min 5 s"
        prompt = page.locator("details#prompt")
        assert not prompt.evaluate("d => d.open")
        prompt.locator("summary").click()
        assert "Review the pull request." in prompt.locator("pre.prompt").inner_text()
        assert "Speed up the importer" in prompt.locator("pre.prompt").inner_text()
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.set_viewport_size({"width": 1280, "height": 900})
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "session-1280.png"), full_page=True)

        page.goto(f"{served_app}/routines/alice/reviewer")
        token_row = page.locator(f'#tokens tr[data-trigger="{trigger}"]')
        assert token_row.locator("td.created time").count() == 1
        assert token_row.locator("td.last-used time").count() == 1  # it fired above
        assert "prompt: |" in page.locator("pre.yaml").inner_text()
        assert page.locator(f'tr[data-session="{api_session}"] td.about details').count() == 1
        fits_at_390(page, "routine")

        page.goto(served_app + "/usage")
        card = page.locator('[data-account="alice"]')
        total = card.locator('table.usage-days tfoot tr[data-date="total"]')
        assert "394,038" in total.inner_text()  # 3 × (123,456 + 7,890)
        assert "$0.4323 + unknown" in total.inner_text() and "(1 unpriced request)" in total.inner_text()
        assert card.locator('table.usage-models tr[data-model="homebrew-model"]').inner_text().count("unknown") == 1
        assert card.locator("table.usage-routines tbody tr").count() == 2
        fits_at_390(page, "usage")
    finally:
        page.context.close()


def sessions_iso(ts: float) -> str:
    from routinely.when import iso

    return iso(ts)
