"""Replay (routinely.firing.replay): a recorded event routed again through the one start step —
`routinely events replay`, POST /api/events/ID/replay and the events page's button."""
from __future__ import annotations

import json
import subprocess
import sys

from routinely.storage import keys
from tests import openapi_check
from tests.support import apply, apply_api_routines, body_of, delivery_headers, fire, fixture, gh, redis_snapshot


PRO = {"name": "alice", "plan": "pro", "rate_limit": {"events": 1000, "per_seconds": 3600}}  # 5 runs a day
MAX = {**PRO, "plan": "max"}  # 15
ROUTINE = {"name": "review", "triggers": [gh(["pull_request"])]}


def deliver(client):
    body = body_of(fixture("pull_request.opened.json"))
    resp = client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    assert resp.status_code == 202
    return resp.get_json()


def a_daily_cap_drop(client, conn) -> str:
    apply(conn, ROUTINE, account=PRO)
    for _ in range(5):
        assert deliver(client)["sessions"]
    assert deliver(client)["dropped"][0]["reason"] == "daily_cap"
    event = client.get("/api/events?limit=1").get_json()[0]
    assert event["dropped"][0]["reason"] == "daily_cap" and conn.exists(keys.payload(event["id"]))  # kept for a replay
    return event["id"]


def test_a_daily_cap_drop_replayed_after_the_cap_is_raised_makes_a_session_linked_to_it(client, conn, redis_server, tmp_path):
    event_id = a_daily_cap_drop(client, conn)
    apply(conn, ROUTINE, account=MAX)  # the cap raised
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PUBLIC_URL": "http://routinely.test"}
    out = subprocess.run([sys.executable, "-m", "cli", "events", "replay", event_id, "--routine", "review", "--json"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["replay_of"] == event_id and done["forced"] is False and len(done["sessions"]) == 1
    session = client.get(f"/api/sessions/{done['sessions'][0]['id']}").get_json()
    openapi_check.check(client.get(f"/api/sessions/{session['id']}"), "/api/sessions/{id}")
    assert session["trigger"]["replay_of"] == event_id and session["trigger"]["event"] == "pull_request.opened"
    assert conn.exists(keys.payload(done["event"]))  # the session runs with the replayed body
    assert conn.get(keys.payload(done["event"])) == conn.get(keys.payload(event_id))
    replayed = client.get(f"/api/events/{done['event']}").get_json()
    assert replayed["replay_of"] == event_id and replayed["sessions"] == [session["id"]]
    openapi_check.check(client.get(f"/api/events/{done['event']}"), "/api/events/{id}")
    assert "replay of" in client.get("/events").get_data(as_text=True)


def test_the_api_replays_through_admission_and_force_is_recorded(client, conn):
    event_id = a_daily_cap_drop(client, conn)
    again = client.post(f"/api/events/{event_id}/replay", json={"routine": "review"})
    openapi_check.check(again, "/api/events/{id}/replay", "post")
    assert again.status_code == 200 and again.get_json()["dropped"][0]["reason"] == "daily_cap"  # still capped
    forced = client.post(f"/api/events/{event_id}/replay", json={"force": True})
    openapi_check.check(forced, "/api/events/{id}/replay", "post")
    assert forced.status_code == 201
    sid = forced.get_json()["sessions"][0]["id"]
    trigger = client.get(f"/api/sessions/{sid}").get_json()["trigger"]
    assert trigger["replay_of"] == event_id and trigger["forced"] is True
    assert client.get(f"/api/events/{forced.get_json()['event']}").get_json()["forced"] is True

    before = redis_snapshot(conn)
    for ref, body, status in (("evt_nope", {}, 404), (event_id, {"routine": "nobody"}, 409), (event_id, {"force": "yes"}, 400)):
        resp = client.post(f"/api/events/{ref}/replay", json=body)
        openapi_check.check(resp, "/api/events/{id}/replay", "post")
        assert resp.status_code == status
    assert redis_snapshot(conn) == before  # refused: nothing recorded


def test_the_events_page_button_replays_a_drop(client, conn):
    event_id = a_daily_cap_drop(client, conn)
    page = client.get("/events").get_data(as_text=True)
    assert f'action="/events/{event_id}/replay"' in page
    apply(conn, ROUTINE, account=MAX)
    resp = client.post(f"/events/{event_id}/replay", data={"routine": "review"})
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/sessions/session_")


def test_an_api_firing_replays_with_its_text(client, conn):
    (trigger, token), _ = apply_api_routines(conn)
    first = fire(client, trigger, token, body=b'{"text": "SEN-1"}').get_json()["claude_code_session_id"]
    event_id = client.get("/api/events?limit=1").get_json()[0]["id"]
    done = client.post(f"/api/events/{event_id}/replay").get_json()
    session = client.get(f"/api/sessions/{done['sessions'][0]['id']}").get_json()
    assert session["id"] != first and session["trigger"] == {"kind": "api", "text": "SEN-1", "replay_of": event_id}
