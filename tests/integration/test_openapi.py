"""openapi.yaml stays true: the JSON API's real responses validate against it."""
from __future__ import annotations

from tests import openapi_check
from tests.openapi_check import test_the_spec_itself_is_valid_json_schema  # noqa: F401
from tests.support import admin, apply, body_of, delivery_headers, fixture, gh
from tests.support import ROOT_DIR


def test_json_api_responses_match_the_spec(client, conn, settings):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"]), {"api": {}}], "rate_limit": {"events": 1, "per_seconds": 60}})
    body = body_of(fixture("pull_request.opened.json"))
    for _ in range(2):  # one session, one drop
        client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    sid = client.get("/api/sessions").get_json()[0]["id"]
    checks = [
        (client.get("/api/sessions"), "/api/sessions", "get"),
        (client.get("/api/sessions?routine=r&limit=5"), "/api/sessions", "get"),
        (client.get("/api/sessions?limit=0"), "/api/sessions", "get"),
        (client.get(f"/api/sessions/{sid}"), "/api/sessions/{id}", "get"),
        (client.get("/api/sessions/session_x"), "/api/sessions/{id}", "get"),
        (client.get(f"/api/sessions/{sid}/log"), "/api/sessions/{id}/log", "get"),
        (client.get("/api/events"), "/api/events", "get"),
        (client.get("/api/routines"), "/api/routines", "get"),
        (client.get("/healthz"), "/healthz", "get"),
        (client.post(f"/api/sessions/{sid}/cancel"), "/api/sessions/{id}/cancel", "post"),
        (client.post(f"/api/sessions/{sid}/cancel"), "/api/sessions/{id}/cancel", "post"),
        (client.get("/api/routines/alice/r"), "/api/routines/{account}/{name}", "get"),
        (client.get("/api/routines/alice/nope"), "/api/routines/{account}/{name}", "get"),
        (client.post("/api/routines/alice/r/tokens"), "/api/routines/{account}/{name}/tokens", "post"),
        (client.get("/api/routines/alice/r/tokens"), "/api/routines/{account}/{name}/tokens", "get"),
        (client.delete("/api/routines/alice/r/tokens/trig_nope"), "/api/routines/{account}/{name}/tokens/{trigger_id}", "delete"),
        (client.post("/api/routines/alice/r/run", json={"text": "t"}), "/api/routines/{account}/{name}/run", "post"),
        (client.post("/api/routines/alice/r/run"), "/api/routines/{account}/{name}/run", "post"),  # 429: rate limit
        (client.post("/api/routines/alice/r/pause"), "/api/routines/{account}/{name}/pause", "post"),
        (client.post("/api/routines/alice/r/run"), "/api/routines/{account}/{name}/run", "post"),  # 400: paused
        (client.post("/api/routines/alice/r/resume"), "/api/routines/{account}/{name}/resume", "post"),
        (client.get("/api/schedules"), "/api/schedules", "get"),
        (client.get("/api/usage"), "/api/usage", "get"),
        (client.get("/metrics"), "/metrics", "get"),
        (client.get("/api/events/nope"), "/api/events/{id}", "get"),
    ]
    for e in client.get("/api/events").get_json():
        checks.append((client.get(f"/api/events/{e['id']}"), "/api/events/{id}", "get"))
    elsewhere = {"/v1/claude_code/routines/{trigger_id}/fire", "/webhooks/github", "/openapi.yaml",
                 "/api/events/{id}/replay", "/api/secrets", "/api/secrets/{name}"}  # their own tests (replay: tests/test_replay.py; secrets: tests/test_secrets.py)
    assert sorted({path for _, path, _ in checks} | elsewhere) == sorted(openapi_check.SPEC["paths"])
    for resp, path, method in checks:
        openapi_check.check(resp, path, method)
    events = client.get("/api/events").get_json()
    assert any(e["dropped"] for e in events)  # the drop shape was exercised


def test_the_spec_is_served_as_is(client):
    resp = client.get("/openapi.yaml")
    assert resp.status_code == 200 and resp.mimetype == "application/yaml"
    assert resp.data == (ROOT_DIR / "openapi.yaml").read_bytes()


def test_refusals_and_errors_match_the_spec(client, conn, settings, redis_server):
    from app import create_app
    from routinely.storage import keys
    from tests.support import CuttingProxy, sign

    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    body = body_of(fixture("pull_request.opened.json"))
    good = delivery_headers("pull_request", body)
    hook = "/webhooks/github"
    checks = [
        (client.post(hook, data=body, headers=good), hook, "post"),
        (client.post(hook, data=body, headers=good), hook, "post"),  # duplicate: 200
        (client.post(hook, data=body_of(fixture("ping.json")), headers=delivery_headers("ping", body_of(fixture("ping.json")))), hook, "post"),
        (client.post(hook, data=body, headers={**good, "X-Hub-Signature-256": sign("x", body)}), hook, "post"),
        (client.post(hook, data=body, headers={**good, "X-GitHub-Delivery": "../x"}), hook, "post"),
        (client.post(hook, data=body, headers={**good, "Content-Type": "text/plain"}), hook, "post"),
        (client.post(hook, data=b"x" * (25 * 1024 * 1024 + 1), headers=good), hook, "post"),
        (client.get("/api/sessions?limit=%C2%B2"), "/api/sessions", "get"),
        (client.get("/api/events?limit=0"), "/api/events", "get"),
    ]
    sid = client.get("/api/sessions").get_json()[0]["id"]
    checks.append((client.get(f"/api/sessions/{sid}/log?after=nope"), "/api/sessions/{id}/log", "get"))
    conn.set(keys.EVENTS, "wrong type")  # an error reply from Redis: 500
    checks.append((client.get("/api/events"), "/api/events", "get"))
    checks.append((client.post(hook, data=body, headers=delivery_headers("pull_request", body)), hook, "post"))
    conn.delete(keys.EVENTS)
    guarded = create_app(settings.with_(admin_token="t0ken")).test_client()
    for path, method in [("/api/sessions", "get"), ("/api/events", "get"), ("/api/routines", "get"),
                         (f"/api/sessions/{sid}", "get"), (f"/api/sessions/{sid}/log", "get"),
                         (f"/api/sessions/{sid}/cancel", "post")]:
        spec_path = path.replace(sid, "{id}")
        checks.append((guarded.open(path, method=method.upper()), spec_path, method))
    proxy = CuttingProxy(redis_server.port)
    try:
        down = admin(create_app(settings.with_(redis_url=proxy.url)).test_client())
        proxy.mode = "refuse"
        for path, method in [("/api/sessions", "get"), ("/api/events", "get"), ("/api/routines", "get"),
                             (f"/api/sessions/{sid}", "get"), (f"/api/sessions/{sid}/log", "get"),
                             (f"/api/sessions/{sid}/cancel", "post"), ("/healthz", "get"), (hook, "post")]:
            resp = down.open(path, method=method.upper(), data=body if path == hook else None,
                             headers=delivery_headers("pull_request", body) if path == hook else None)
            assert resp.status_code == 503, path
            checks.append((resp, path.replace(sid, "{id}"), method))
    finally:
        proxy.close()
    statuses = set()
    for resp, path, method in checks:
        openapi_check.check(resp, path, method)
        statuses.add((path, resp.status_code))
    assert {(hook, s) for s in (200, 202, 400, 401, 413, 415, 500, 503)} <= statuses
