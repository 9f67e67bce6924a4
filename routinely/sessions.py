"""The session store: the one place that reads and changes session records.

Records are created only by the start script (routinely.start); here they are read,
listed newest first, and moved through their lifecycle.
"""
from __future__ import annotations

from typing import Any, Iterable

import orjson
import redis

from routinely import keys
from routinely.config import Settings

STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "canceled")
FINAL = frozenset({"succeeded", "failed", "timed_out", "canceled"})
MAX_LIMIT = 1000
_PUBLIC = ("id", "routine", "account", "status", "created_at", "started_at", "finished_at")


def _text(raw: dict[bytes, bytes], name: str) -> str | None:
    value = raw.get(name.encode())
    return value.decode() if value else None


def to_public(raw: dict[bytes, bytes], settings: Settings) -> dict[str, Any]:
    """A stored record as the JSON API and the CLI show it."""
    out: dict[str, Any] = {name: _text(raw, name) for name in _PUBLIC}
    trigger = raw.get(b"trigger")
    out["trigger"] = orjson.loads(trigger) if trigger else {}
    code = _text(raw, "exit_code")
    out["exit_code"] = int(code) if code not in (None, "") else None
    out["metered"] = raw.get(b"metered") == b"1"
    out["url"] = f"{settings.public_url}/sessions/{out['id']}"
    out["log_url"] = f"{settings.public_url}/api/sessions/{out['id']}/log"
    reason = _text(raw, "reason")
    if reason:
        out["reason"] = reason
    return out


def get_raw(conn: redis.Redis, session_id: str) -> dict[bytes, bytes] | None:
    raw = conn.hgetall(keys.session(session_id))
    return raw or None


def get(conn: redis.Redis, settings: Settings, session_id: str) -> dict[str, Any] | None:
    raw = get_raw(conn, session_id)
    return to_public(raw, settings) if raw else None


def listing(conn: redis.Redis, settings: Settings, routine: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Sessions newest first (at most `limit`, capped at MAX_LIMIT)."""
    index = keys.sessions_of(routine) if routine else keys.SESSIONS
    ids_ = conn.zrevrange(index, 0, max(1, min(limit, MAX_LIMIT)) - 1)
    return [to_public(raw, settings) for raw in _fetch(conn, ids_) if raw]


def _fetch(conn: redis.Redis, session_ids: Iterable[bytes]) -> list[dict[bytes, bytes]]:
    pipe = conn.pipeline(transaction=False)
    for sid in session_ids:
        pipe.hgetall(keys.session(sid.decode()))
    return pipe.execute()


def update(conn: redis.Redis, session_id: str, **fields: Any) -> None:
    conn.hset(keys.session(session_id), mapping={k: "" if v is None else str(v) for k, v in fields.items()})
