"""The hostile corpus (tests/hostile.py) in-process: no 5xx, each status as listed, every
refusal stores nothing but the contract's counters, and every status is in openapi.yaml."""
from __future__ import annotations

from app import create_app
from tests import hostile, openapi_check
from tests.support import redis_snapshot


def _spec_path(path: str) -> tuple[str, str] | None:
    path = path.split("?")[0]
    parts = path.strip("/").split("/")
    if path == hostile.HOOK:
        return hostile.HOOK, "post"
    if parts[:2] == ["api", "sessions"] and len(parts) == 3:
        return "/api/sessions/{id}", "get"
    if parts[:2] == ["api", "sessions"] and len(parts) == 4:
        return "/api/sessions/{id}/" + parts[3], "get" if parts[3] == "log" else "post"
    if parts[:3] == ["v1", "claude_code", "routines"] and len(parts) == 5:
        return "/v1/claude_code/routines/{trigger_id}/fire", "post"
    if path in openapi_check.SPEC["paths"]:
        return path, "get"
    return None


def counters_aside(snapshot):
    """Without the counters a refusal may keep: the contract's, and failed sign-ins per address (app.auth)."""
    return {k: v for k, v in snapshot.items() if not k.startswith((b"rly:count:", b"rly:console:failures:"))}


def test_the_hostile_corpus(settings, conn):
    settings = settings.with_(admin_token=hostile.ADMIN, webhook_secret=hostile.SECRET)
    ctx = hostile.prepare(conn, settings)
    client = create_app(settings).test_client()
    cases = [c for c in hostile.corpus(ctx) if c.raw is None]
    assert len(cases) >= 200
    failures = []
    for case in cases:
        before = counters_aside(redis_snapshot(conn)) if case.refusal else None
        resp = client.open(case.path, method=case.method, headers=case.headers, data=case.body)
        if resp.status_code not in case.expect:
            failures.append(f"{case.name}: {resp.status_code} not in {sorted(case.expect)}")
            continue
        if case.refusal and counters_aside(redis_snapshot(conn)) != before:
            failures.append(f"{case.name}: a refusal stored something")
        if resp.status_code == 405:
            assert resp.headers.get("Allow"), case.name
        where = _spec_path(case.path)
        if where and where[0] in openapi_check.SPEC["paths"] and case.method.lower() == where[1] and resp.status_code != 405:
            openapi_check.check(resp, *where)
    assert failures == []
