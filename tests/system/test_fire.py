"""The API trigger: POST /v1/claude_code/routines/{trigger_id}/fire."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from routinely.routines import api_tokens, catalog
from routinely.storage import keys
from routinely.routine_file import parse_config
from tests.support import FIRE_BETA, apply_api_routines, fire, redis_snapshot


def test_a_fire_starts_a_session_and_answers_like_the_hosted_service(client, conn, settings):
    (trigger, token), _ = apply_api_routines(conn)
    resp = fire(client, trigger, token)
    assert resp.status_code == 200
    body = resp.get_json()
    sid = body["claude_code_session_id"]
    assert body == {"type": "routine_fire", "claude_code_session_id": sid,
                    "claude_code_session_url": f"http://routinely.test/sessions/{sid}"}
    page = client.get(f"/sessions/{sid}")
    assert page.status_code == 200 and sid in page.data.decode()
    session = client.get(f"/api/sessions/{sid}").get_json()
    assert session["trigger"] == {"kind": "api", "text": "x"} and session["routine"] == "alerts"
    assert client.get("/api/events").get_json()[0]["kind"] == "api"


def test_text_round_trips_raw(client, conn):
    (trigger, token), _ = apply_api_routines(conn)
    text = "Alert fired\n\n```json\n{\"cpu\": 99, \"host\": \"db-1\"}\n```\n# Not a heading to us — ünïcødé ✓ 日本語\n\ttab"
    resp = fire(client, trigger, token, body=json.dumps({"text": text}).encode())
    sid = resp.get_json()["claude_code_session_id"]
    assert client.get(f"/api/sessions/{sid}").get_json()["trigger"]["text"] == text


def test_no_body_and_an_empty_object_are_fine(client, conn):
    (trigger, token), _ = apply_api_routines(conn)
    assert fire(client, trigger, token, body=b"").status_code == 200
    assert fire(client, trigger, token, body=b"{}").status_code == 200


def test_an_earlier_configured_beta_is_accepted(settings, conn):
    from app import create_app

    app = create_app(settings.with_(api_betas=(FIRE_BETA, "experimental-cc-routine-2026-01-01")))
    (trigger, token), _ = apply_api_routines(conn)
    assert fire(app.test_client(), trigger, token, **{"anthropic-beta": "experimental-cc-routine-2026-01-01"}).status_code == 200
    assert fire(app.test_client(), trigger, token, **{"anthropic-beta": f"other-beta, {FIRE_BETA}"}).status_code == 200


def _refusals():
    yield "missing authorization", {"Authorization": None}, None, 401, "authentication_error"
    yield "wrong token", {"Authorization": "Bearer rtn_wrong"}, None, 401, "authentication_error"
    yield "basic auth", {"Authorization": "Basic eDp5"}, None, 401, "authentication_error"
    yield "other trigger's token", "OTHER", None, 401, "authentication_error"
    yield "revoked token", "REVOKED", None, 401, "authentication_error"
    yield "unknown trigger", "UNKNOWN", None, 404, "not_found_error"
    yield "unknown beta", {"anthropic-beta": "experimental-cc-routine-2025-01-01"}, None, 400, "invalid_request_error"
    yield "missing beta", {"anthropic-beta": None}, None, 400, "invalid_request_error"
    yield "missing version", {"anthropic-version": None}, None, 400, "invalid_request_error"
    yield "wrong version", {"anthropic-version": "2024-01-01"}, None, 400, "invalid_request_error"
    yield "malformed json", {}, b'{"text": ', 400, "invalid_request_error"
    yield "array body", {}, b'["x"]', 400, "invalid_request_error"
    yield "string body", {}, b'"x"', 400, "invalid_request_error"
    yield "number text", {}, b'{"text": 5}', 400, "invalid_request_error"
    yield "object text", {}, b'{"text": {"a": 1}}', 400, "invalid_request_error"
    yield "oversize", {}, json.dumps({"text": "x" * (256 * 1024)}).encode(), 413, "request_too_large"


@pytest.mark.parametrize("case", list(_refusals()), ids=lambda c: c[0])
def test_every_refusal_starts_nothing(client, conn, case):
    name, extra, body, status, kind = case
    (trigger, token), (other_trigger, other_token) = apply_api_routines(conn)
    if extra == "OTHER":
        extra = {"Authorization": f"Bearer {other_token}"}
    elif extra == "REVOKED":
        api_tokens.revoke(conn, catalog.load(conn), trigger)
        extra = {}
    elif extra == "UNKNOWN":
        trigger, extra = "trig_01ZZZZZZZZZZZZZZZZZZZZZZZZ", {}
    counters_before = {k: v for k, v in redis_snapshot(conn).items() if k.startswith(b"rly:count:")}
    before = {k: v for k, v in redis_snapshot(conn).items() if not k.startswith(b"rly:count:")}
    resp = fire(client, trigger, token, body=body if body is not None else b'{"text": "x"}', **extra)
    assert resp.status_code == status
    assert resp.get_json()["error"]["type"] == kind
    after = redis_snapshot(conn)
    assert {k: v for k, v in after.items() if not k.startswith(b"rly:count:")} == before  # no session, no event
    counters_after = {k: v for k, v in after.items() if k.startswith(b"rly:count:")}
    assert counters_after != counters_before  # but it was counted


def test_a_paused_routine_answers_400_and_records_nothing_but_a_counter(client, conn):
    (trigger, token), _ = apply_api_routines(conn, paused=True)
    before = {k: v for k, v in redis_snapshot(conn).items() if not k.startswith(b"rly:count:")}
    resp = fire(client, trigger, token)
    assert resp.status_code == 400 and resp.get_json()["error"]["message"] == "the routine is paused"
    assert {k: v for k, v in redis_snapshot(conn).items() if not k.startswith(b"rly:count:")} == before  # no event
    assert conn.get(keys.counter("fire_refused:invalid_request_error")) == b"1"


def test_a_routine_paused_by_another_process_is_seen_at_once(client, conn):
    (trigger, token), _ = apply_api_routines(conn)
    assert fire(client, trigger, token).status_code == 200  # this process has the catalog cached now
    data = catalog.as_file(catalog.load(conn).config)
    data["routines"][0]["paused"] = True
    catalog.save(conn, parse_config(data, None))  # another process pauses it
    before = conn.zcard(keys.EVENTS)
    assert fire(client, trigger, token).status_code == 400
    assert conn.zcard(keys.EVENTS) == before


def test_a_drop_answers_429_with_retry_after(client, conn):
    (trigger, token), _ = apply_api_routines(conn, rate_limit={"events": 1, "per_seconds": 3600})
    assert fire(client, trigger, token).status_code == 200
    resp = fire(client, trigger, token)
    assert resp.status_code == 429 and resp.get_json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(resp.headers["Retry-After"]) <= 3600
    assert conn.zcard(keys.SESSIONS) == 1
    assert client.get("/api/events").get_json()[0]["dropped"][0]["reason"] == "routine_rate_limit"


def test_a_trigger_whose_routine_lost_its_api_trigger_is_404(client, conn):
    (trigger, token), _ = apply_api_routines(conn)
    catalog.apply(conn, {"accounts": [{"name": "ops"}], "routines": [
        {"name": "alerts", "account": "ops", "prompt": "p", "repositories": ["a/b"],
         "triggers": [{"github": {"events": ["release"]}}]}]}, time.time())
    assert fire(client, trigger, token).status_code == 404
    assert conn.zcard(keys.SESSIONS) == 0


def test_cli_tokens_rotate_and_revoke(client, conn, redis_server, tmp_path):
    apply_api_routines(conn)
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cli = lambda *a: subprocess.run([sys.executable, "-m", "cli", *a], env=env, capture_output=True, text=True)  # noqa: E731
    first = json.loads(cli("token", "create", "alerts", "--json").stdout)
    second = json.loads(cli("token", "create", "ops/alerts", "--json").stdout)
    assert set(first) == {"trigger_id", "token"} and first["trigger_id"].startswith("trig_")
    stored = json.dumps({k.decode(): str(v) for k, v in redis_snapshot(conn).items()})
    assert first["token"] not in stored and second["token"] not in stored  # only hashes are kept
    assert fire(client, first["trigger_id"], first["token"]).status_code == 200
    assert fire(client, second["trigger_id"], second["token"]).status_code == 200  # both live: rotation
    assert fire(client, second["trigger_id"], first["token"]).status_code == 401
    out = cli("token", "revoke", first["trigger_id"])
    assert out.returncode == 0
    assert fire(client, first["trigger_id"], first["token"]).status_code == 401
    assert fire(client, second["trigger_id"], second["token"]).status_code == 200
    out = cli("token", "revoke", "alerts", "--json")
    assert second["trigger_id"] in json.loads(out.stdout)["revoked"]
    assert fire(client, second["trigger_id"], second["token"]).status_code == 401
    bad = cli("token", "create", "nosuch")
    assert bad.returncode == 1 and bad.stderr.startswith("routinely: no routine named 'nosuch'")


def test_tokens_need_an_api_trigger(conn, redis_server, tmp_path):
    catalog.apply(conn, {"accounts": [{"name": "ops"}], "routines": [
        {"name": "gh", "account": "ops", "prompt": "p", "repositories": ["a/b"],
         "triggers": [{"github": {"events": ["release"]}}]}]}, time.time())
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cli", "token", "create", "gh"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "has no api trigger" in out.stderr


def test_a_fire_past_the_daily_cap_says_what_raises_it_and_when_it_opens(client, conn):
    spec = {"name": "alerts", "account": "ops", "prompt": "p", "triggers": [{"api": {}}]}
    catalog.apply(conn, {"accounts": [{"name": "ops", "plan": "pro", "timezone": "UTC"}], "routines": [spec]}, time.time())
    trigger, token = api_tokens.create(conn, catalog.load(conn).find("alerts"))
    for _ in range(5):
        assert fire(client, trigger, token).status_code == 200
    resp = fire(client, trigger, token)
    message = resp.get_json()["error"]["message"]
    assert resp.status_code == 429 and 0 < int(resp.headers["Retry-After"]) <= 86_400
    assert message.startswith("dropped (daily_cap): the account's runs for today are used; raise `plan:`"), message
    assert "`extra_usage: true`" in message and re.search(r"opens again in (\d+ h( \d+ min)?|\d+ min( \d+ s)?|\d+ s)$", message)
