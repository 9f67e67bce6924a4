"""openapi.yaml stays true: the JSON API's real responses validate against it."""
from __future__ import annotations

from routinely import catalog
from routinely.cli import fire_one
from routinely.start import Firing
from tests import openapi_check
from tests.openapi_check import test_the_spec_itself_is_valid_json_schema  # noqa: F401
from tests.support import body_of, delivery_headers, fixture
from tests.test_receiver import apply, gh


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
    assert sorted({path for _, path, _ in checks} | {"/v1/claude_code/routines/{trigger_id}/fire"}) == sorted(openapi_check.SPEC["paths"])
    for resp, path, method in checks:
        openapi_check.check(resp, path, method)
    events = client.get("/api/events").get_json()
    assert any(e["dropped"] for e in events)  # the drop shape was exercised
