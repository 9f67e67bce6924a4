"""Fail sessions whose worker died (SIGKILL, lost host): their heartbeat stops.

Runs in the scheduler process every few seconds and when a worker starts.
"""
from __future__ import annotations

import redis

from routinely import keys, session_log, sessions
from routinely.start import iso
from workers import sandbox

HEARTBEAT_TIMEOUT_SECONDS = 60  # runners beat every second; a minute of silence is a dead worker


def reap(conn: redis.Redis, now: float, timeout: float = HEARTBEAT_TIMEOUT_SECONDS) -> list[str]:
    """Mark running sessions whose heartbeat is older than `timeout` at `now` (the settings'
    clock) as failed; return their ids."""
    stale = conn.zrangebyscore(keys.RUNNING, "-inf", int((now - timeout) * 1000))
    reaped = []
    for raw_id in stale:
        sid = raw_id.decode()
        reason = f"routinely: the worker running this session stopped answering for {int(timeout)} s (killed or host lost); marked failed"
        if sessions.transition(conn, sid, ["running"], status="failed", finished_at=iso(now), reason=reason):
            session_log.append(conn, sid, reason)
            reaped.append(sid)
            if not sandbox.finish(sessions.get_raw(conn, sid) or {}):  # survivors and the cgroup, on this host
                session_log.append(conn, sid, "routinely: processes of this session outlived its worker and could not all be ended")
        conn.zrem(keys.RUNNING, sid)
    return reaped
