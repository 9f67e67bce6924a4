"""The session store: the one place that reads and changes session records.

Records are created only by the start script (routinely.start); here they are read,
listed newest first, and moved through their lifecycle.
"""
from __future__ import annotations

from typing import Any, Iterable

import orjson
import redis

from routinely import actions, jobs, keys
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
    resources = raw.get(b"resources")
    out["resources"] = orjson.loads(resources) if resources else None
    sandbox = _text(raw, "sandbox")
    if sandbox:
        out["sandbox"] = sandbox  # "off": the session ran unsandboxed (ROUTINELY_SANDBOX=off)
    warm = _text(raw, "warm_start")
    if warm:
        out["warm_start"] = warm  # what the session reused: mirrors, a cached setup
    return out


def get_raw(conn: redis.Redis, session_id: str) -> dict[bytes, bytes] | None:
    raw = conn.hgetall(keys.session(session_id))
    return raw or None


def get(conn: redis.Redis, settings: Settings, session_id: str) -> dict[str, Any] | None:
    """One session with what its github connector did (`actions`, `github_reads`)."""
    raw = get_raw(conn, session_id)
    if not raw:
        return None
    out = to_public(raw, settings)
    out["actions"], out["github_reads"] = actions.of_session(conn, session_id)
    return out


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


_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
for i = 1, tonumber(ARGV[1]) do
  if ARGV[1 + i] == status then
    redis.call('HSET', KEYS[1], unpack(ARGV, tonumber(ARGV[1]) + 2))
    return 1
  end
end
return 0
"""


def transition(conn: redis.Redis, session_id: str, allowed: Iterable[str], **fields: Any) -> bool | None:
    """Set `fields` only if the session's status is one of `allowed` (atomically).

    Returns True when applied, False when the status did not allow it, None when there is
    no such session. Every status change goes through here, so racing actors (a cancel and
    a worker starting, a reaper and a late finish) cannot overwrite each other.
    """
    allowed = list(allowed)
    flat: list[str] = []
    for k, v in fields.items():
        flat += [k, "" if v is None else str(v)]
    result = conn.eval(_TRANSITION, 1, keys.session(session_id), len(allowed), *allowed, *flat)
    return None if result == -1 else bool(result)


def cancel(conn: redis.Redis, session_id: str, now_iso: str) -> str:
    """Cancel a queued or running session; returns the outcome in one word.

    A queued session is canceled at once and its job taken off the queue; a running one is
    flagged and its runner stops the agent's process group within a second.
    """
    done = transition(conn, session_id, ["queued"], status="canceled", finished_at=now_iso, reason="canceled before it started")
    if done is None:
        return "unknown"
    if done:
        jobs.cancel(conn, session_id)  # the job id is the session id
        return "canceled"
    raw = get_raw(conn, session_id) or {}
    if raw.get(b"status") == b"running":
        conn.set(keys.session_cancel(session_id), "1", ex=keys.DAY)
        return "canceling"
    return "finished"
