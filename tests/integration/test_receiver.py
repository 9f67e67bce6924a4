"""POST /webhooks/github with real, signed GitHub payloads against a real Redis."""
from __future__ import annotations

import pytest

from app import create_app
from app.signature import sign
from routinely.storage import jobs, keys
from tests.support import SECRET, CuttingProxy, admin, apply, body_of, delivery_headers, fixture, gh, post, queued_ids, redis_snapshot


def test_matching_delivery_makes_one_queued_session_per_routine(client, conn):
    apply(conn, {"name": "review", "triggers": [gh(["pull_request.opened"])]},
          {"name": "labels", "triggers": [gh(["pull_request"], {"field": "labels", "op": "equals", "value": "bug"})]},
          {"name": "other-event", "triggers": [gh(["pull_request.closed"])]},
          {"name": "other-repo", "repositories": ["octo/else"], "triggers": [gh(["pull_request.opened"])]})
    resp, headers = post(client, "pull_request", fixture("pull_request.opened.installation.json"))
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["delivery"] == headers["X-GitHub-Delivery"] and body["dropped"] == []
    assert sorted(s["routine"] for s in body["sessions"]) == ["labels", "review"]
    ids = [s["id"] for s in body["sessions"]]
    assert all(i.startswith("session_") and len(i) == 34 for i in ids)
    assert sorted(queued_ids(conn)) == sorted(ids)
    queued = jobs.queue(conn, "routinely").jobs
    assert {j.func_name for j in queued} == {"workers.run.run_session"}
    assert sorted(j.id for j in queued) == sorted(ids)  # the job id is the session id
    session = client.get(f"/api/sessions/{ids[0]}").get_json()
    assert session["status"] == "queued" and session["account"] == "alice"
    assert session["trigger"] == {"kind": "github", "event": "pull_request.opened", "delivery": headers["X-GitHub-Delivery"]}
    assert session["url"] == f"http://routinely.test/sessions/{ids[0]}"
    event = client.get("/api/events").get_json()[0]
    assert event["kind"] == "github" and event["event"] == "pull_request.opened"
    assert sorted(event["sessions"]) == sorted(ids) and event["duplicate"] is False
    assert conn.get(keys.payload(event["id"])) is not None  # kept for $ROUTINELY_EVENT_FILE


def test_repository_names_compare_ignoring_case(client, conn):
    apply(conn, {"name": "r", "repositories": ["codertocat/HELLO-world"], "triggers": [gh(["pull_request.opened"])]})
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    assert len(resp.get_json()["sessions"]) == 1


def test_a_duplicate_delivery_starts_nothing(client, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request.opened"])]})
    payload = fixture("pull_request.opened.json")
    body = body_of(payload)
    headers = delivery_headers("pull_request", body)
    first = client.post("/webhooks/github", data=body, headers=headers)
    again = client.post("/webhooks/github", data=body, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200 and again.get_json() == {"delivery": headers["X-GitHub-Delivery"], "duplicate": True}
    assert len(queued_ids(conn)) == 1
    assert 6 * keys.DAY < conn.ttl(keys.delivery(headers["X-GitHub-Delivery"])) <= keys.DELIVERY_TTL
    events = client.get("/api/events").get_json()
    assert [e["duplicate"] for e in events] == [True, False]
    assert [conn.exists(keys.payload(e["id"])) for e in events] == [0, 1]  # the copy keeps no body


def test_a_delivery_whose_every_routine_is_dropped_keeps_its_body_for_a_replay(client, conn):
    apply(conn, {"name": "r", "rate_limit": {"events": 1, "per_seconds": 3600}, "triggers": [gh(["pull_request"])]})
    post(client, "pull_request", fixture("pull_request.opened.json"))
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    assert resp.get_json()["dropped"][0]["reason"] == "routine_rate_limit"
    events = client.get("/api/events").get_json()
    assert [conn.exists(keys.payload(e["id"])) for e in events] == [1, 1]
    assert 0 < conn.ttl(keys.payload(events[0]["id"])) <= keys.EVENT_TTL  # kept for the retention window, no longer


def test_a_redis_that_forgot_the_start_script_gets_it_again(client, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    conn.script_flush()  # as after a Redis restart
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    assert resp.status_code == 202 and len(resp.get_json()["sessions"]) == 1
    assert len(list(conn.scan_iter(keys.payload("*")))) == 1  # the first try's body did not stay behind


def test_merged_pr_arrives_as_closed_with_is_merged(client, conn):
    apply(conn, {"name": "on-merge", "triggers": [gh(["pull_request.closed"], {"field": "is_merged", "op": "equals", "value": True})]})
    payload = fixture("pull_request.closed.unmerged.json")
    resp, _ = post(client, "pull_request", payload)
    assert resp.get_json()["sessions"] == []
    payload["pull_request"]["merged"] = True
    resp, _ = post(client, "pull_request", payload)
    assert [s["routine"] for s in resp.get_json()["sessions"]] == ["on-merge"]


def test_release_filters_route_releases(client, conn):
    apply(conn, {"name": "rel", "triggers": [gh(["release.published"], {"field": "tag", "op": "matches_regex", "value": r"\d+\.\d+\.\d+"},
                                                  {"field": "is_prerelease", "op": "equals", "value": False})]})
    resp, _ = post(client, "release", fixture("release.published.json"))
    assert [s["routine"] for s in resp.get_json()["sessions"]] == ["rel"]
    resp, _ = post(client, "release", fixture("release.prereleased.json"))
    assert resp.get_json()["sessions"] == []


def test_paused_routines_are_recorded_as_skipped(client, conn):
    apply(conn, {"name": "sleepy", "paused": True, "triggers": [gh(["pull_request"])]})
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    assert resp.status_code == 202 and resp.get_json()["sessions"] == []
    assert client.get("/api/events").get_json()[0]["skipped"] == ["sleepy"]
    assert queued_ids(conn) == []


@pytest.mark.parametrize("event,name", [("push", "push.json"), ("issues", "issues.opened.json"),
                                        ("deployment", "push.json")])
def test_other_events_are_acknowledged_and_recorded_only(client, conn, event, name):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    resp, _ = post(client, event, fixture(name))
    assert resp.status_code == 202 and resp.get_json()["sessions"] == []
    recorded = client.get("/api/events").get_json()[0]
    assert recorded["event"].startswith(event) and recorded["sessions"] == []
    assert queued_ids(conn) == []
    assert not list(conn.scan_iter(keys.payload("*")))


def test_installation_events_record_which_installation_covers_which_repo(client, conn):
    post(client, "installation", fixture("installation.created.json"))
    assert conn.hgetall(keys.INSTALLATIONS) == {b"codertocat/hello-world": b"957387"}
    post(client, "installation_repositories", fixture("installation_repositories.added.json"))
    assert conn.hget(keys.INSTALLATIONS, "codertocat/space") == b"957387"
    removed = fixture("installation_repositories.removed.json")
    removed["repositories_removed"][0]["full_name"] = "Codertocat/Space"
    post(client, "installation_repositories", removed)
    assert conn.hget(keys.INSTALLATIONS, "codertocat/space") is None
    deleted = fixture("installation.deleted.json")
    deleted["repositories"][0]["full_name"] = "Codertocat/Hello-World"
    post(client, "installation", deleted)
    assert conn.hgetall(keys.INSTALLATIONS) == {}


def test_ping_answers_200(client, conn):
    resp, _ = post(client, "ping", fixture("ping.json"))
    assert resp.status_code == 200 and resp.get_json()["ok"] is True


def test_previous_secret_works_during_a_rotation(settings, conn):
    app = create_app(settings.with_(webhook_secret="new-secret", webhook_secret_previous=SECRET))
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    resp, _ = post(app.test_client(), "pull_request", fixture("pull_request.opened.json"))
    assert resp.status_code == 202
    resp, _ = post(app.test_client(), "pull_request", fixture("pull_request.opened.json"), secret="new-secret")
    assert resp.status_code == 202
    resp, _ = post(app.test_client(), "pull_request", fixture("pull_request.opened.json"), secret="old-old")
    assert resp.status_code == 401


def _refusals():
    body = body_of(fixture("pull_request.opened.json"))
    good = delivery_headers("pull_request", body)
    no_sig = {k: v for k, v in good.items() if k != "X-Hub-Signature-256"}
    yield "missing signature", body, no_sig, 401
    yield "wrong signature", body, {**good, "X-Hub-Signature-256": sign("other", body)}, 401
    yield "sha1 only", body, {**no_sig, "X-Hub-Signature": "sha1=00"}, 401
    yield "tampered body", body.replace(b"Codertocat", b"Codertocaz"), good, 401
    yield "missing event", body, {k: v for k, v in good.items() if k != "X-GitHub-Event"}, 400
    yield "missing delivery", body, {k: v for k, v in good.items() if k != "X-GitHub-Delivery"}, 400
    yield "bad delivery id", body, {**good, "X-GitHub-Delivery": "../../etc"}, 400
    yield "form content type", body, {**good, "Content-Type": "application/x-www-form-urlencoded"}, 415
    bad = b'{"action": "opened", '
    yield "malformed json", bad, delivery_headers("pull_request", bad), 400
    arr = b"[1, 2]"
    yield "not an object", arr, delivery_headers("pull_request", arr), 400
    big = b'{"a": "' + b"x" * (25 * 1024 * 1024 + 1) + b'"}'
    yield "over 25 MB", big, delivery_headers("pull_request", big), 413


@pytest.mark.parametrize("case", list(_refusals()), ids=lambda c: c[0])
def test_every_refusal_changes_nothing(client, conn, case):
    _, body, headers, status = case
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    before = redis_snapshot(conn)
    resp = client.post("/webhooks/github", data=body, headers=headers)
    assert resp.status_code == status
    assert resp.get_json()["error"]
    assert redis_snapshot(conn) == before  # nothing recorded, claimed or enqueued
    if status == 401:
        # the delivery id is not claimed: the genuine delivery still goes through
        genuine = body_of(fixture("pull_request.opened.json"))
        ok = client.post("/webhooks/github", data=genuine, headers={**delivery_headers("pull_request", genuine),
                         "X-GitHub-Delivery": headers.get("X-GitHub-Delivery", "x")})
        assert ok.status_code == 202


def test_unset_secret_refuses_every_delivery(settings, conn):
    app = create_app(settings.with_(webhook_secret=None))
    before = redis_snapshot(conn)
    resp, _ = post(app.test_client(), "pull_request", fixture("pull_request.opened.json"))
    assert resp.status_code == 503 and "GITHUB_WEBHOOK_SECRET" in resp.get_json()["error"]
    assert redis_snapshot(conn) == before


def test_redis_cut_mid_request_answers_503_writes_nothing_and_redelivery_works(settings, conn, redis_server):
    proxy = CuttingProxy(redis_server.port)
    try:
        app = create_app(settings.with_(redis_url=proxy.url))
        apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
        client = admin(app.test_client())
        body = body_of(fixture("pull_request.opened.json"))
        headers = delivery_headers("pull_request", body)
        app.extensions["routinely"].starter.cache.get(app.extensions["routinely"].conn)  # warm, as a running server is
        before = redis_snapshot(conn)
        proxy.mode = "cut"
        resp = client.post("/webhooks/github", data=body, headers=headers)
        assert resp.status_code == 503 and proxy.cuts >= 1
        assert redis_snapshot(conn) == before  # no claim, no session, no job, no event
        proxy.mode = "refuse"
        assert client.get("/healthz").status_code == 503
        proxy.mode = "pass"
        assert client.get("/healthz").status_code == 200
        again = client.post("/webhooks/github", data=body, headers=headers)  # GitHub's redelivery
        assert again.status_code == 202 and len(again.get_json()["sessions"]) == 1
    finally:
        proxy.close()


def test_configuration_applied_elsewhere_is_seen_by_the_next_delivery(client, conn):
    apply(conn, {"name": "first", "triggers": [gh(["pull_request"])]})
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    assert [s["routine"] for s in resp.get_json()["sessions"]] == ["first"]
    apply(conn, {"name": "second", "triggers": [gh(["pull_request"])]})  # another process applies
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    assert [s["routine"] for s in resp.get_json()["sessions"]] == ["second"]


def test_pathological_title_does_not_stall_the_receiver(client, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"], {"field": "title", "op": "matches_regex", "value": "(a|aa)+$"})]})
    payload = fixture("pull_request.opened.json")
    payload["pull_request"]["title"] = "a" * 100_000 + "b"
    resp, _ = post(client, "pull_request", payload)
    assert resp.status_code == 202 and resp.get_json()["sessions"] == []
