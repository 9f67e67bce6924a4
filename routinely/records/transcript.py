"""A session's transcript: what the agent did, step by step, as the agent itself reported it.

Entries are plain dicts with a `kind` — `start`, `text`, `thinking`, `tool_call`, `tool_result`,
`error`, `result` — written by the runner as the agent prints its structured events and read
by the session page and the API. The agent's own account of its cost (`agent_usage`) sits
beside the gateway's metered `usage`, never instead of it.
"""
from __future__ import annotations

from typing import Any, Iterable

import orjson
import redis

from routinely.storage import keys

MAX_ENTRIES = 5_000
MAX_FIELD = 8_192  # a tool's output is cut past this; the plain log still has the agent's summary


def cut(text: str, limit: int = MAX_FIELD) -> str:
    return text if len(text) <= limit else text[:limit] + f" …[{len(text) - limit} more characters]"


def append(conn: redis.Redis | redis.client.Pipeline, session_id: str, entries: Iterable[dict[str, Any]]) -> None:
    key = keys.session_transcript(session_id)
    data = [orjson.dumps(e) for e in entries]
    if data:
        conn.rpush(key, *data)
        conn.ltrim(key, 0, MAX_ENTRIES - 1)
        conn.expire(key, keys.SESSION_TTL)


def read(conn: redis.Redis, session_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in conn.lrange(keys.session_transcript(session_id), 0, -1)]


def steps(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries for display: each tool call carries its result (`result`), matched by id."""
    results = {e.get("id"): e for e in entries if e.get("kind") == "tool_result"}
    calls = {e.get("id") for e in entries if e.get("kind") == "tool_call"}
    shown = []
    for entry in entries:
        if entry.get("kind") == "tool_result" and entry.get("id") in calls:
            continue
        if entry.get("kind") == "tool_call":
            entry = {**entry, "result": results.get(entry.get("id"))}
        shown.append(entry)
    return shown

