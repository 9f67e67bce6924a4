"""Fail sessions whose worker died (SIGKILL, lost host): their heartbeat stops.

Runs in the scheduler process every REAP_EVERY_SECONDS and when a worker starts. A reaped
session is failed, what is left of it on this host is cleaned up (its processes, workspace
and relay), and its RQ job moved out of "started", so nothing of a dead worker lingers.
"""
from __future__ import annotations

import socket
from pathlib import Path

import redis

from routinely.storage import jobs, keys
from routinely.records import session_log, sessions
from routinely.firing import start
from routinely.when import iso
from workers import leftovers, sandbox
from workers.outbox import HEARTBEAT_EVERY

HEARTBEAT_TIMEOUT_SECONDS = 10.0  # runners beat every HEARTBEAT_EVERY s: five missed beats is a dead worker
REAP_EVERY_SECONDS = 5.0  # so a dead worker's sessions fail within 15 s of their last beat
assert HEARTBEAT_TIMEOUT_SECONDS >= 4 * HEARTBEAT_EVERY


def reap(conn: redis.Redis, now: float, data_dir: Path | None = None,
         timeout: float = HEARTBEAT_TIMEOUT_SECONDS) -> list[str]:
    """Mark running sessions with a stale heartbeat as failed and clean up after them; return their ids.

    `now` is the settings' clock; `data_dir` (this host's) is where its workspace and relay are.

    Nothing is reaped while Redis itself has been up for less than `timeout`: after a
    restart every heartbeat looks stale until the runners (which buffered them) write again."""
    if timeout > 0 and int(conn.info("server").get("uptime_in_seconds", 0)) < timeout:
        return []
    stale = conn.zrangebyscore(keys.RUNNING, "-inf", int((now - timeout) * 1000))
    reaped = []
    for raw_id in stale:
        sid = raw_id.decode()
        session = sessions.load(conn, sid)
        ended = True
        if session is not None and session.status == "running" and session.host == socket.gethostname():
            # like the runner: nothing of it is left once it reads as finished
            ended = sandbox.finish(session)  # its cgroup and its uid's processes
            if data_dir is not None:
                leftovers.clean(sid, data_dir)  # processes that carry its id, its mounts, workspace and relay
        reason = f"routinely: the worker running this session stopped answering for {int(timeout)} s (killed or host lost); marked failed"
        if sessions.transition(conn, sid, ["running"], status="failed", finished_at=iso(now), reason=reason):
            session_log.append(conn, sid, reason)
            reaped.append(sid)
            jobs.settle(conn, sid, False, reason)  # out of RQ's "started"
            start.release(conn, sid)  # its concurrency group passes to the session waiting behind it
            if not ended:
                session_log.append(conn, sid, "routinely: processes of this session outlived its worker and could not all be ended")
        conn.zrem(keys.RUNNING, sid)
    return reaped

