"""Refused at the door: the bounded record of refused deliveries (routinely.records.refusals) on the
events page, in GET /api/events?outcome=refused and in `routinely explain`, real Redis."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from app import create_app
from routinely.storage import keys
from routinely.records import refusals
from tests import openapi_check
from tests.support import apply, body_of, delivery_headers, fixture, gh, queued_ids, redis_snapshot


def counters_aside(snapshot):
    return {k: v for k, v in snapshot.items() if not k.startswith(b"rly:count:")}


def test_a_wrong_secret_shows_on_the_events_page_in_the_api_and_in_explain(client, conn, redis_server, tmp_path):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    body = body_of(fixture("pull_request.opened.json"))
    headers = delivery_headers("pull_request", body, secret="not-the-apps-secret")
    resp = client.post("/webhooks/github", data=body, headers=headers)
    assert resp.status_code == 401
    delivery = headers["X-GitHub-Delivery"]

    listed = client.get("/api/events?outcome=refused")
    openapi_check.check(listed, "/api/events")
    [row] = listed.get_json()
    assert row["delivery"] == delivery and row["event"] == "pull_request" and row["reason"] == "signature_mismatch"
    assert row["status"] == 401 and row["address"] == "127.0.0.1" and row["outcome"] == "refused"
    assert body.decode() not in str(conn.xrange(keys.REFUSALS))  # never the body
    assert client.get("/api/events").get_json() == []  # no event record: it never got past the door
    assert client.get("/api/events?outcome=other").status_code == 400

    page = client.get("/events").get_data(as_text=True)
    assert delivery in page and "refused at the door: signature mismatch — check the App&#39;s webhook secret" in page

    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cli", "explain", delivery], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "refused at the door: signature mismatch — check the App's webhook secret" in out.stdout
    as_json = subprocess.run([sys.executable, "-m", "cli", "explain", delivery, "--json"], env=env,
                             capture_output=True, text=True)
    assert as_json.returncode == 0 and '"reason": "signature_mismatch"' in as_json.stdout


CASES = {
    "missing signature": (401, "signature_missing", lambda h, b: ({k: v for k, v in h.items() if k != "X-Hub-Signature-256"}, b)),
    "wrong signature": (401, "signature_mismatch", lambda h, b: ({**h, "X-Hub-Signature-256": "sha256=" + "0" * 64}, b)),
    "missing event": (400, "bad_request", lambda h, b: ({k: v for k, v in h.items() if k != "X-GitHub-Event"}, b)),
    "form content type": (415, "content_type", lambda h, b: ({**h, "Content-Type": "application/x-www-form-urlencoded"}, b)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_refusal_is_kept_and_stores_nothing_else(client, conn, name):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    status, reason, change = CASES[name]
    body = body_of(fixture("pull_request.opened.json"))
    headers, body = change(delivery_headers("pull_request", body), body)
    before = counters_aside(redis_snapshot(conn))  # redis_snapshot leaves keys.REFUSALS aside
    resp = client.post("/webhooks/github", data=body, headers=headers)
    assert resp.status_code == status
    assert counters_aside(redis_snapshot(conn)) == before and queued_ids(conn) == []  # nothing else, nothing enqueued
    [kept] = refusals.listing(conn)
    assert kept["reason"] == reason and kept["detail"] == resp.get_json()["error"]


def test_malformed_json_and_a_too_large_body_are_kept(client, conn):
    body = b"{not json"
    resp = client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    assert resp.status_code == 400
    big = b'{"a": "' + b"x" * (25 * 1024 * 1024) + b'"}'
    resp = client.post("/webhooks/github", data=big, headers=delivery_headers("pull_request", big))
    assert resp.status_code == 413
    assert [r["reason"] for r in refusals.listing(conn)] == ["too_large", "bad_request"]
    assert refusals.line(refusals.listing(conn)[1]) == "refused at the door: malformed request: the body is not valid JSON"


def test_an_unset_secret_is_kept_and_a_stranger_cannot_plant_markup(settings, conn):
    client = create_app(settings.with_(webhook_secret=None)).test_client()
    resp = client.post("/webhooks/github", data=b"{}", headers={**delivery_headers("pull_request", b"{}"),
                                                                 "X-GitHub-Delivery": "<script>x</script>",
                                                                 "X-GitHub-Event": "a" * 500})
    assert resp.status_code == 503
    [kept] = refusals.listing(conn)
    assert kept["reason"] == "secret_not_set" and kept["delivery"] is None and kept["event"] is None


def test_a_flood_of_10000_bad_signatures_leaves_the_record_at_its_cap(app, client, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    body = body_of(fixture("pull_request.opened.json"))
    headers = delivery_headers("pull_request", body, secret="wrong")
    before = counters_aside(redis_snapshot(conn))
    t0 = time.perf_counter()
    last = ""
    for _ in range(10_000):
        last = str(uuid.uuid4())
        resp = client.post("/webhooks/github", data=body, headers={**headers, "X-GitHub-Delivery": last})
        assert resp.status_code == 401
    took = time.perf_counter() - t0
    assert conn.xlen(keys.REFUSALS) == keys.REFUSALS_KEPT == 1000  # the Redis figure: at its cap, not past it
    assert refusals.listing(conn, 1)[0]["delivery"] == last  # the newest kept, the oldest gone
    assert counters_aside(redis_snapshot(conn)) == before and queued_ids(conn) == []
    memory = conn.memory_usage(keys.REFUSALS)
    assert memory < 400_000, memory  # ~1,000 short entries
    print(f"10,000 refusals through the test client: {took * 100:.0f} µs each; the record {memory} bytes")
