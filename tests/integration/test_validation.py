"""No bad input gets a 5xx: payload shapes, odd digits, bad cursors, Redis error replies.
Each case asserts its status and that nothing was stored beyond the contract's counters."""
from __future__ import annotations

import pytest
import redis

from routinely.storage import keys
from routinely.records import session_log
from tests.support import apply, body_of, delivery_headers, fixture, gh, post, redis_snapshot


@pytest.mark.parametrize("event,name,field", [
    ("installation", "installation.created.json", "repositories"),
    ("installation", "installation.deleted.json", "repositories"),
    ("installation_repositories", "installation_repositories.added.json", "repositories_added"),
    ("installation_repositories", "installation_repositories.removed.json", "repositories_removed"),
])
@pytest.mark.parametrize("value", [7, True, "octo/repo", {"full_name": "octo/repo"}, [1, None, "x"]])
def test_installation_lists_of_the_wrong_shape_are_ignored(client, conn, event, name, field, value):
    conn.hset(keys.INSTALLATIONS, "keep/me", "1")
    payload = fixture(name)
    payload[field] = value
    resp, _ = post(client, event, payload)
    assert resp.status_code == 202
    assert conn.hgetall(keys.INSTALLATIONS) == {b"keep/me": b"1"}  # nothing set or removed


@pytest.mark.parametrize("inst", [{"id": True}, {"id": {"x": 1}}, {"id": "12a"}, {"id": "١٢"}, "957387", None])
def test_an_installation_id_of_the_wrong_shape_names_no_installation(client, conn, inst):
    payload = fixture("installation.created.json")
    payload["installation"] = inst
    resp, _ = post(client, "installation", payload)
    assert resp.status_code == 202 and conn.hgetall(keys.INSTALLATIONS) == {}


@pytest.mark.parametrize("path", ["repository", "pull_request", "pull_request.head", "pull_request.base.repo",
                                  "pull_request.user", "pull_request.labels", "action", "sender"])
@pytest.mark.parametrize("value", [5, "x", [1], None, True])
def test_a_pull_request_of_any_shape_is_never_a_500(client, conn, path, value):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"], {"field": "labels", "op": "equals", "value": "bug"},
                                              {"field": "from_fork", "op": "equals", "value": False})]})
    payload = fixture("pull_request.opened.json")
    *parents, last = path.split(".")
    obj = payload
    for p in parents:
        obj = obj[p]
    obj[last] = value
    resp, _ = post(client, "pull_request", payload)
    assert resp.status_code == 202


@pytest.mark.parametrize("path", ["/api/sessions", "/api/events"])
@pytest.mark.parametrize("raw", ["%C2%B2", "%D9%A1", "%EF%BC%91", "0", "1001", "-1", "+5", "1e3", "", "%20", "5%00",
                                 "99999999999999999999", "1.0", "0x10"])
def test_limit_takes_ascii_digits_from_1_to_1000(client, conn, path, raw):
    before = redis_snapshot(conn)
    resp = client.get(f"{path}?limit={raw}")
    assert resp.status_code == 400 and "limit must be a whole number from 1 to 1000" in resp.get_json()["error"]
    assert redis_snapshot(conn) == before


@pytest.mark.parametrize("path", ["/api/sessions", "/api/events"])
def test_limit_in_range_is_taken(client, conn, path):
    assert client.get(f"{path}?limit=1").status_code == 200
    assert client.get(f"{path}?limit=1000").status_code == 200
    assert client.get(f"{path}").status_code == 200


def _a_session(client, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    sid = resp.get_json()["sessions"][0]["id"]
    for i in range(3):
        session_log.append(conn, sid, f"line {i}")
    return sid


@pytest.mark.parametrize("after", ["garbage", "-", "+", "1-", "2e+", "99999999999999999999999-0", "1-2-3", "%C2%B2-0",
                                   "18446744073709551616-0", "(1-0", "1 -0"])
def test_a_bad_log_cursor_is_400_with_the_format(client, conn, after):
    sid = _a_session(client, conn)
    before = redis_snapshot(conn)
    resp = client.get(f"/api/sessions/{sid}/log?after={after}")
    assert resp.status_code == 400 and "log cursor like" in resp.get_json()["error"]
    assert redis_snapshot(conn) == before


def test_good_log_cursors_read_on(client, conn):
    sid = _a_session(client, conn)
    first = client.get(f"/api/sessions/{sid}/log")
    cursor = first.headers["X-Log-Cursor"]
    assert first.data.decode().splitlines() == ["line 0", "line 1", "line 2"]
    assert client.get(f"/api/sessions/{sid}/log?after={cursor}").data == b""
    assert client.get(f"/api/sessions/{sid}/log?after=0-0").data.decode().count("\n") == 3
    last = f"{2**64 - 1}-{2**64 - 1}"
    resp = client.get(f"/api/sessions/{sid}/log?after={last}")
    assert resp.status_code == 200 and resp.data == b""


def test_a_redis_error_reply_is_a_500_not_an_outage(client, conn, monkeypatch):
    """An error reply means Redis answered: our bug, reported as such, never as 'unavailable'."""
    def refuse(*args, **kwargs):
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    monkeypatch.setattr(session_log, "read", refuse)
    sid = _a_session(client, conn)
    resp = client.get(f"/api/sessions/{sid}/log")
    assert resp.status_code == 500 and "unavailable" not in resp.get_json()["error"]


def test_a_wrong_kind_of_key_in_redis_is_a_500_at_the_webhook_door(client, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    conn.set(keys.EVENTS, "not a sorted set")  # the script's ZADD gets an error reply
    body = body_of(fixture("pull_request.opened.json"))
    resp = client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    assert resp.status_code == 500 and "unavailable" not in resp.get_json()["error"]


@pytest.mark.parametrize("raw", ["%C2%B2", "%D9%A1", "0", "x", "99999"])
def test_a_strange_page_number_on_a_page_is_never_a_500(client, conn, raw):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    before = redis_snapshot(conn)
    resp = client.get(f"/routines/alice/r?page={raw}")
    assert resp.status_code == 200
    assert redis_snapshot(conn) == before
