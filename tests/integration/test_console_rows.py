"""Console rows with context (issue #31): a session's duration, the pull request or issue (or
API text) that started it, the prompt its agent got; a routine's prompt as a YAML block; API
tokens' created and last-used dates."""
from __future__ import annotations

import html
import re
import time

import yaml

from routinely.routines import api_tokens, catalog
from routinely.storage import ids, keys
from routinely.records import session_context, sessions
from routinely import when
from routinely.firing.start import Firing, fire_one
from tests import openapi_check
from tests.support import MULTILINE_PROMPT, apply_api_routines, body_of, delivery_headers, fire, fixture


# -- the routine page's YAML
def test_a_multi_line_prompt_dumps_as_a_block_and_reads_back_the_same():
    text = catalog.dump_yaml({"name": "r", "prompt": MULTILINE_PROMPT, "one": "it's one line"})
    assert "prompt: |\n  Review the pull request.\n  It's a two-line prompt" in text
    assert "''" not in text  # no doubled quote inside a quoted scalar
    assert yaml.safe_load(text) == {"name": "r", "prompt": MULTILINE_PROMPT, "one": "it's one line"}
    awkward = "trailing space \nand a\ttab\n"  # a block cannot hold these exactly: PyYAML quotes, losslessly
    assert yaml.safe_load(catalog.dump_yaml({"p": awkward})) == {"p": awkward}


def test_the_routine_page_shows_the_prompt_as_a_block(client, conn):
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max"}], "routines": [
        {"name": "r", "account": "alice", "prompt": MULTILINE_PROMPT, "triggers": [{"api": {}}]}]}, time.time())
    page = html.unescape(client.get("/routines/alice/r").data.decode())
    definition = re.search(r'<pre class="yaml">(.*?)</pre>', page, re.S).group(1)
    assert "prompt: |" in definition and yaml.safe_load(definition)["prompt"] == MULTILINE_PROMPT


# -- API tokens' dates
def test_a_token_is_created_when_its_trigger_id_says():
    before = time.time()
    trigger = ids.trigger_id()
    made = api_tokens.created_at(trigger)
    assert made is not None and abs(when.parse_iso(made) - before) < 2
    assert api_tokens.created_at("trig_nonsense!") is None


def test_last_used_is_recorded_when_a_token_fires_and_not_when_refused(client, conn):
    (trigger, token), (other, _) = apply_api_routines(conn)
    assert fire(client, trigger, "rtn_wrong").status_code == 401
    assert conn.hget(api_tokens.LAST_USED, trigger) is None  # a refusal records nothing
    assert fire(client, trigger, token).status_code == 200
    resp = client.get("/api/routines/ops/alerts/tokens")
    openapi_check.check(resp, "/api/routines/{account}/{name}/tokens")
    row = resp.get_json()[0]
    assert row["created_at"] == api_tokens.created_at(trigger) and row["last_used_at"].endswith("Z")
    assert client.get("/api/routines/ops/other/tokens").get_json()[0]["last_used_at"] is None
    page = html.unescape(client.get("/routines/ops/alerts").data.decode())
    cells = re.search(rf'<tr data-trigger="{trigger}">(.*?)</tr>', page, re.S).group(1)
    assert f'<time datetime="{row["created_at"]}"' in cells and f'<time datetime="{row["last_used_at"]}"' in cells
    other_page = html.unescape(client.get("/routines/ops/other").data.decode())
    assert "never" in re.search(rf'<tr data-trigger="{other}">(.*?)</tr>', other_page, re.S).group(1)


def test_token_list_prints_the_dates(conn, settings, capsys):
    from cli.tokens import cmd_token

    (trigger, _), _ = apply_api_routines(conn)
    api_tokens.used(conn, trigger, time.time() - 3600)
    args = type("Args", (), {"action": "list", "ref": None, "json": False})()
    cmd_token(args, settings)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-3:] == ["CREATED", "LAST", "USED"]
    mine = next(line for line in lines if trigger in line)
    assert "(1 h ago)" in mine or "(1.0 h ago)" in mine or "min ago" in mine


# -- session rows
def test_durations_read_as_a_person_says_them():
    now = 1_000_000.0
    s = {"status": "succeeded", "started_at": "1970-01-12T13:46:40Z", "finished_at": "1970-01-12T13:49:45Z"}
    assert session_context.duration(s, now) == {"text": "3 min 5 s", "running": False}
    running = {"status": "running", "started_at": "1970-01-12T13:46:40Z", "finished_at": None}
    assert session_context.duration(running, now + 7260) == {"text": "2 h 1 min", "running": True}
    assert session_context.duration({"status": "queued", "started_at": None}, now) is None
    assert session_context.span_words(45.9) == "45 s" and session_context.span_words(3 * 86_400 + 7200) == "3 days 2 h"


def test_the_subject_of_an_event():
    pr = fixture("pull_request.opened.json")
    got = session_context.subject("pull_request.opened", pr)
    assert got["kind"] == "pull request" and got["number"] == pr["pull_request"]["number"]
    assert got["url"] == pr["pull_request"]["html_url"]
    issue = fixture("issues.opened.json")
    assert session_context.subject("issues.opened", issue)["kind"] == "issue"
    assert session_context.subject("push", fixture("push.json")) is None
    hostile = {"pull_request": {"number": 1, "title": "x", "html_url": "javascript:alert(1)"}}
    assert session_context.subject("pull_request.opened", hostile)["url"] is None


def test_the_prompt_is_kept_bounded():
    assert session_context.bounded("short") == "short"
    cut = session_context.bounded("é" * 20_000)
    assert len(cut.encode()) < session_context.PROMPT_KEPT + 100 and "[cut: the prompt was 40000 bytes" in cut


def github_session(client, conn, settings, title: str) -> str:
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max"}], "routines": [
        {"name": "r", "account": "alice", "prompt": MULTILINE_PROMPT, "repositories": ["octo/api"],
         "triggers": [{"github": {"events": ["pull_request.opened"]}}, {"api": {}}]}]}, time.time())
    payload = fixture("pull_request.opened.json")
    payload["repository"]["full_name"] = "octo/api"
    payload["pull_request"]["title"] = title
    body = body_of(payload)
    assert client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body)).status_code == 202
    return client.get("/api/sessions").get_json()[0]["id"]


def test_session_rows_show_duration_subject_and_api_text(client, conn, settings):
    sid = github_session(client, conn, settings, "Fix <the> flaky test")
    sessions.update(conn, sid, status="succeeded", started_at="2026-01-01T10:00:00.000Z",
                    finished_at="2026-01-01T10:02:30.000Z")
    long_text = "Deploy failed on host-7\n" + "stack line\n" * 40
    api = fire_one(settings, conn, "alice/r", Firing(kind="api", text=long_text))["id"]
    sessions.update(conn, api, status="running", started_at="2000-01-01T00:00:00.000Z")
    for path in ("/sessions", "/routines/alice/r"):
        page = client.get(path).data.decode()
        row = re.search(rf'<tr data-session="{sid}">(.*?)</tr>', page, re.S).group(1)
        assert "2 min 30 s" in row and "pull request #" in row and "Fix &lt;the&gt; flaky test" in row
        assert 'href="https://github.com/' in row and 'rel="noopener noreferrer"' in row
        api_row = re.search(rf'<tr data-session="{api}">(.*?)</tr>', page, re.S).group(1)
        assert "running for" in api_row and "days" in api_row
        assert "<details class=\"text\"><summary>Deploy failed on host-7…</summary>" in api_row


def test_the_session_page_says_what_started_it_and_shows_the_prompt(client, conn, settings):
    sid = github_session(client, conn, settings, "Make it faster")
    page = html.unescape(client.get(f"/sessions/{sid}").data.decode())
    assert re.search(r'<dd id="subject"><a class="subject" href="https://github.com/[^"]+" rel="noopener noreferrer">'
                     r'pull request #\d+</a> Make it faster', page)
    prompt = re.search(r'<details class="card" id="prompt">(.*?)</details>', page, re.S).group(1)
    assert "rebuilt from the routine's current prompt" in prompt  # the runner kept no copy of this one
    assert "Review the pull request." in prompt and "title: Make it faster" in prompt
    conn.hset(keys.session(sid), session_context.PROMPT_FIELD, "the very prompt the runner wrote")  # as workers/run.py does
    page = html.unescape(client.get(f"/sessions/{sid}").data.decode())
    prompt = re.search(r'<details class="card" id="prompt">(.*?)</details>', page, re.S).group(1)
    assert "the very prompt the runner wrote" in prompt and "rebuilt" not in prompt
    assert conn.ttl(keys.session(sid)) > 0  # the copy lives and dies with the record
