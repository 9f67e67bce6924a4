"""Idempotency-Key on POST …/fire (routinely.firing.idempotency): one session per key and body,
across concurrent clients of a real served app."""
from __future__ import annotations

import threading

import requests

from routinely.storage import keys
from tests import openapi_check
from tests.support import FIRE_PATH, apply_api_routines, fire, fire_headers, redis_snapshot


def counters_aside(snapshot):
    return {k: v for k, v in snapshot.items() if not k.startswith(b"rly:count:")}


def sessions_made(conn) -> int:
    return conn.zcard(keys.SESSIONS)


def test_twenty_concurrent_clients_with_one_key_make_one_session(served_app, conn):
    (trigger, token), _ = apply_api_routines(conn)
    url = f"{served_app}/v1/claude_code/routines/{trigger}/fire"
    answers: list[requests.Response] = []
    go = threading.Barrier(20)

    def call():
        go.wait()
        answers.append(requests.post(url, data=b'{"text": "SEN-4521"}', timeout=30,
                                     headers=fire_headers(token, **{"Idempotency-Key": "alert-SEN-4521"})))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200] * 20
    ids = {a.json()["claude_code_session_id"] for a in answers}
    assert len(ids) == 1 and sessions_made(conn) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 19
    assert len(conn.zrange(keys.EVENTS, 0, -1)) == 1  # one firing recorded, not twenty

    # a different body under the same key: 409, one line, nothing stored
    before = counters_aside(redis_snapshot(conn))
    other = requests.post(url, data=b'{"text": "another alert"}', timeout=30,
                          headers=fire_headers(token, **{"Idempotency-Key": "alert-SEN-4521"}))
    assert other.status_code == 409
    assert other.json()["error"]["type"] == "invalid_request_error" and "\n" not in other.json()["error"]["message"]
    assert counters_aside(redis_snapshot(conn)) == before and sessions_made(conn) == 1


def test_the_same_key_answers_the_same_session_and_another_key_fires_again(client, conn):
    (trigger, token), (other_trigger, other_token) = apply_api_routines(conn)
    first = fire(client, trigger, token, **{"Idempotency-Key": "k1"})
    again = fire(client, trigger, token, **{"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 200 and first.get_json() == again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and sessions_made(conn) == 1
    assert fire(client, trigger, token, **{"Idempotency-Key": "k2"}).get_json() != first.get_json()
    assert fire(client, other_trigger, other_token, **{"Idempotency-Key": "k1"}).status_code == 200  # per token
    assert sessions_made(conn) == 3
    assert fire(client, trigger, token, **{"Idempotency-Key": "x" * 256}).status_code == 400
    ttl = max(conn.ttl(k) for k in conn.scan_iter(keys.idempotency(trigger, "*")))
    assert keys.IDEMPOTENCY_TTL - 5 < ttl <= keys.IDEMPOTENCY_TTL


def test_a_dropped_call_leaves_the_key_free(client, conn):
    (trigger, token), _ = apply_api_routines(conn, rate_limit={"events": 1, "per_seconds": 3600})
    assert fire(client, trigger, token).status_code == 200  # the window's one firing
    dropped = fire(client, trigger, token, **{"Idempotency-Key": "k"})
    assert dropped.status_code == 429
    assert not list(conn.scan_iter(keys.idempotency(trigger, "*")))  # a retry is a new attempt
    openapi_check.check(dropped, FIRE_PATH, "post")
