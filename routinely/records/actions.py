"""What a session's github connector did: its writes (as actions) and how many reads it made.

Written by the worker that serves the connector, read by the JSON API and the session page.
An action holds the tool, the repository, the issue or pull request number and the URL of
what was made — never a token or a body — so a chain of sessions can be traced by repo and
number later.
"""
from __future__ import annotations

from typing import Any

import orjson
import redis

from routinely.storage import keys

MAX_ACTIONS = 1000  # far above any max_writes; the list cannot grow without bound


def record(conn: redis.Redis, session_id: str, action: dict[str, Any]) -> None:
    key = keys.session_actions(session_id)
    pipe = conn.pipeline(transaction=False)
    pipe.rpush(key, orjson.dumps(action))
    pipe.ltrim(key, -MAX_ACTIONS, -1)
    pipe.expire(key, keys.SESSION_TTL)
    pipe.execute()


def count_read(conn: redis.Redis, session_id: str) -> None:
    key = keys.session_reads(session_id)
    pipe = conn.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, keys.SESSION_TTL)
    pipe.execute()


def of_session(conn: redis.Redis, session_id: str) -> tuple[list[dict[str, Any]], int]:
    """(actions in the order they happened, number of reads)."""
    pipe = conn.pipeline(transaction=False)
    pipe.lrange(keys.session_actions(session_id), 0, -1)
    pipe.get(keys.session_reads(session_id))
    raw, reads = pipe.execute()
    return [orjson.loads(a) for a in raw], int(reads or 0)
