"""Reading event records (deliveries and firings with their outcome), newest first."""
from __future__ import annotations

from typing import Any

import orjson
import redis

from routinely import keys
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
