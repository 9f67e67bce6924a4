"""Reading event records (deliveries and firings with their outcome), newest first, and
explaining one that started nothing."""
from __future__ import annotations

from typing import Any

import orjson
import redis

from filters import EVENT_KINDS, wants_event
from filters.explain import missing_repository, routine_misses
from routinely import keys
from routinely.catalog import RECORDED_CHARS, Catalog
from routinely.sessions import MAX_LIMIT


def to_public(raw: dict[bytes, bytes]) -> dict[str, Any]:
    text = lambda name: raw[name].decode() if raw.get(name) else None  # noqa: E731
    return {
        "id": text(b"id"),
        "kind": text(b"kind"),
        "delivery": text(b"delivery"),
        "event": text(b"event"),
        "repository": text(b"repository"),
        "routine": text(b"routine"),
        "received_at": text(b"received_at"),
        "sessions": orjson.loads(raw.get(b"sessions") or b"[]"),
        "dropped": orjson.loads(raw.get(b"dropped") or b"[]"),
        "skipped": orjson.loads(raw.get(b"skipped") or b"[]"),
        "duplicate": raw.get(b"duplicate") == b"1",
    }


def listing(conn: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    ids_ = conn.zrevrange(keys.EVENTS, 0, max(1, min(limit, MAX_LIMIT)) - 1)
    pipe = conn.pipeline(transaction=False)
    for eid in ids_:
        pipe.hgetall(keys.event(eid.decode()))
    return [to_public(raw) for raw in pipe.execute() if raw]


def get(conn: redis.Redis, event_id: str) -> dict[str, Any] | None:
    raw = conn.hgetall(keys.event(event_id))
    return to_public(raw) if raw else None


def get_raw(conn: redis.Redis, event_id: str) -> dict[bytes, bytes] | None:
    return conn.hgetall(keys.event(event_id)) or None


def find(conn: redis.Redis, ref: str) -> dict[bytes, bytes] | None:
    """An event record by event id, or by the GitHub delivery id it recorded."""
    raw = get_raw(conn, ref)
    if raw is None:
        claimed = conn.get(keys.delivery(ref))
        raw = get_raw(conn, claimed.decode()) if claimed else None
    return raw


def explain(raw: dict[bytes, bytes], catalog: Catalog) -> dict[str, Any] | None:
    """Why this event started nothing, or None when it started a session.

    `summary` is one line; `routines` has, per routine watching the repository, the first
    condition that failed on each of its github triggers (the payload's value included),
    or what happened after it matched (paused, dropped).
    """
    event = to_public(raw)
    if event["sessions"]:
        return None
    if event["duplicate"]:
        return {"summary": "a redelivery of a delivery already received: duplicates start nothing", "routines": []}
    rows = [{"name": r["routine"], "reasons": [f"matched, then dropped: {r['reason']}"
                                               + (f" ({r['detail']})" if r.get("detail") else "")]} for r in event["dropped"]]
    rows += [{"name": name, "reasons": ["matched, but the routine is paused (skipped)"]} for name in event["skipped"]]
    if event["kind"] != "github":
        summary = rows[0]["reasons"][0] if rows else "the routine it was for no longer exists or lost its trigger"
        return {"summary": summary, "routines": rows}
    name, repo = event["event"] or "", event["repository"]
    kind = name.partition(".")[0]
    if kind not in EVENT_KINDS:
        return {"summary": f"routines do not start on {kind or 'unnamed'} events", "routines": rows}
    if not repo:
        return {"summary": "the delivery names no repository", "routines": rows}
    fields = orjson.loads(raw.get(b"filter_fields") or b"{}")  # kept by the receiver (routinely.catalog.route)
    done = {r["name"] for r in rows}
    watching = [r for r in catalog.routines.values() if r.github and repo.lower() in {x.lower() for x in r.repositories}]
    for routine in watching:
        if routine.name in done:
            continue
        misses = routine_misses(routine.repositories, routine.github, name, repo, fields, RECORDED_CHARS)
        rows.append({"name": routine.name, "account": routine.account,
                     "reasons": misses or ["matches now: the configuration changed since this delivery"]})
    if not watching:
        # a routine listening for this event elsewhere is the likely mistake: say so
        for routine in catalog.routines.values():
            if any(wants_event(t.events, kind, name) for t in routine.github):
                rows.append({"name": routine.name, "account": routine.account,
                             "reasons": [missing_repository(repo, routine.repositories)]})
        return {"summary": f"no routine watches {repo}", "routines": rows}
    if event["skipped"] or event["dropped"]:  # it matched: what stopped it comes first
        stopped = [f"{n} is paused" for n in event["skipped"]] + [f"{d['routine']} was dropped ({d['reason']})" for d in event["dropped"]]
        return {"summary": "matched, but " + "; ".join(stopped), "routines": rows}
    return {"summary": f"{len(watching)} routine(s) watch {repo}; none took this {name}", "routines": rows}


def explained(conn: redis.Redis, catalog: Catalog, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """The newest events after `offset`, each with its `explanation` (None when it started a session)."""
    ids_ = conn.zrevrange(keys.EVENTS, offset, offset + max(1, min(limit, MAX_LIMIT)) - 1)
    pipe = conn.pipeline(transaction=False)
    for eid in ids_:
        pipe.hgetall(keys.event(eid.decode()))
    return [{**to_public(raw), "explanation": explain(raw, catalog)} for raw in pipe.execute() if raw]
