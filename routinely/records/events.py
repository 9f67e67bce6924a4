"""Reading event records (deliveries and firings with their outcome), newest first, and
explaining one that started nothing.

A record is one JSON object at keys.event(id), written by routinely/firing/start.lua: id, kind,
received_at, trigger, delivery/event/repository/routine when the firing had them,
filter_fields (what the routines watching the repository read), duplicate, sessions,
dropped, skipped. Records written before it was JSON are hashes; they read the same.
A replay's record says which event it replays (`replay_of`, from its trigger). Deliveries
refused at the door have no event record: routinely.records.refusals keeps the last of them.
"""
from __future__ import annotations

from typing import Any

import orjson
import redis

from filters import EVENT_KINDS, wants_event
from filters.explain import missing_repository, routine_misses
from routinely.storage import keys
from routinely.routines.catalog import RECORDED_CHARS, Catalog
from routinely.records.sessions import MAX_LIMIT


Record = dict[str, Any]
_JSON_FIELDS = (b"trigger", b"sessions", b"dropped", b"skipped", b"filter_fields")


def to_public(record: Record) -> dict[str, Any]:
    out = {
        "id": record.get("id"),
        "kind": record.get("kind"),
        "delivery": record.get("delivery"),
        "event": record.get("event"),
        "repository": record.get("repository"),
        "routine": record.get("routine"),
        "received_at": record.get("received_at"),
        "sessions": record.get("sessions") or [],
        "dropped": record.get("dropped") or [],
        "skipped": record.get("skipped") or [],
        "duplicate": record.get("duplicate") is True,
    }
    trigger = record.get("trigger")
    if isinstance(trigger, dict) and trigger.get("replay_of"):  # a replay (routinely.firing.replay): the event it replays
        out["replay_of"] = trigger["replay_of"]
        out["forced"] = trigger.get("forced") is True
    if record.get("recovered") is True:  # recorded from a redelivery recovery asked for (routinely.github.recovery)
        out["recovered"] = True
    if record.get("superseded"):  # sessions of a concurrency group this firing replaced or canceled (start.lua)
        out["superseded"] = record["superseded"]
    return out


def _from_hash(raw: dict[bytes, bytes]) -> Record:
    """A record of the hash layout (before records were JSON)."""
    out: Record = {k.decode(): orjson.loads(v) if k in _JSON_FIELDS else v.decode() for k, v in raw.items()}
    out["duplicate"] = raw.get(b"duplicate") == b"1"
    return out


def _decoded(conn: redis.Redis, key: str, got: Any) -> Record | None:
    if isinstance(got, redis.ResponseError):  # WRONGTYPE: a hash record
        raw = conn.hgetall(key)
        return _from_hash(raw) if raw else None  # (gone in between: expired)
    return orjson.loads(got) if got else None


def records(conn: redis.Redis, event_ids: list[bytes]) -> list[Record]:
    """The records of these events (one round trip), those that expired left out."""
    names = [keys.event(eid.decode()) for eid in event_ids]
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.get(name)
    got = pipe.execute(raise_on_error=False)
    return _recovered(conn, [r for r in (_decoded(conn, name, value) for name, value in zip(names, got)) if r])


def _recovered(conn: redis.Redis, recs: list[Record]) -> list[Record]:
    """Flag `recovered` the deliveries recorded after recovery asked GitHub for them (one round trip)."""
    asked = [r for r in recs if r.get("delivery") and r.get("duplicate") is not True]
    if asked:
        for r, hit in zip(asked, conn.mget([keys.recovery_asked(str(r["delivery"])) for r in asked])):
            if hit is not None:
                r["recovered"] = True
    return recs


def listing(conn: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    ids_ = conn.zrevrange(keys.EVENTS, 0, max(1, min(limit, MAX_LIMIT)) - 1)
    return [to_public(record) for record in records(conn, ids_)]


def get_raw(conn: redis.Redis, event_id: str) -> Record | None:
    """One event's record as stored, or None."""
    key = keys.event(event_id)
    try:
        record = _decoded(conn, key, conn.get(key))
    except redis.ResponseError as exc:
        record = _decoded(conn, key, exc)
    return _recovered(conn, [record])[0] if record else None


def get(conn: redis.Redis, event_id: str) -> dict[str, Any] | None:
    record = get_raw(conn, event_id)
    return to_public(record) if record else None


def find(conn: redis.Redis, ref: str) -> Record | None:
    """An event record by event id, or by the GitHub delivery id it recorded."""
    record = get_raw(conn, ref)
    if record is None:
        claimed = conn.get(keys.delivery(ref))
        record = get_raw(conn, claimed.decode()) if claimed else None
    return record


def explain(raw: Record, catalog: Catalog) -> dict[str, Any] | None:
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
    fields = raw.get("filter_fields") or {}  # kept by the receiver (routinely.routines.catalog.route)
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
    return [{**to_public(record), "explanation": explain(record, catalog)} for record in records(conn, ids_)]
