"""A session's log: lines appended as they come (a Redis stream), read whole or from a cursor."""
from __future__ import annotations

import redis

from routinely import keys

MAX_LINES = 100_000  # the oldest lines go first past this
LAST_ID = f"{2**64 - 1}-{2**64 - 1}"
MAX_LINE = 16_384  # longer lines are cut, so one runaway line cannot fill Redis


def append(conn: redis.Redis | redis.client.Pipeline, session_id: str, line: str) -> None:
    key = keys.session_log(session_id)
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE] + " …[line cut]"
    conn.xadd(key, {"l": line}, maxlen=MAX_LINES, approximate=True)
    conn.expire(key, keys.SESSION_TTL)


def read(conn: redis.Redis, session_id: str, after: str | None = None, count: int | None = None) -> tuple[list[str], str | None]:
    """Lines after the cursor `after` (all when None) and the cursor of the last line.
    `after` must be a stream id (app/params.py checks what clients send)."""
    if after == LAST_ID:
        return [], after  # nothing can follow it (and Redis refuses an exclusive range from it)
    start = f"({after}" if after else "-"
    entries = conn.xrange(keys.session_log(session_id), min=start, max="+", count=count)
    lines = [fields[b"l"].decode("utf-8", "replace") for _, fields in entries]
    cursor = entries[-1][0].decode() if entries else after
    return lines, cursor
