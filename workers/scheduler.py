"""The `scheduler` process: fires due schedule triggers through the shared start path.

Any number may run; the one holding a Redis lease (renewed every second, taken over when
its holder dies) does the work, and each run is claimed inside the start script together
with its sessions, so even two racing schedulers fire it once. Next runs are persisted:
after downtime, the latest missed run fires once if it is at most GRACE_SECONDS old, and
the rest are recorded as missed.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
import time
from typing import Any

import redis

from routinely.routines import catalog
from routinely.storage import keys
from routinely.records import schedule_runs
from routinely.config import ConfigError, Settings
from routinely.github.recovery import Recoverer
from routinely.routine_file import Routine
from routinely.routines.schedules import Schedule
from routinely.firing.start import Firing, Starter
from routinely.when import iso
from routinely.records.schedule_runs import field
from routinely.storage.store import connect
from workers.outage import Outage
from workers.reaper import HEARTBEAT_TIMEOUT_SECONDS, REAP_EVERY_SECONDS, reap

GRACE_SECONDS = 3600

_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class Scheduler:
    def __init__(self, conn: redis.Redis, settings: Settings, lease_seconds: float | None = None) -> None:
        self.conn, self.settings = conn, settings
        self.starter = Starter(conn, settings)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_ms = int((settings.scheduler_lease_seconds if lease_seconds is None else lease_seconds) * 1000)
        self._lease = conn.register_script(_LEASE)

    def lead(self) -> bool:
        """Take or keep the lease; True while this scheduler is the one that fires."""
        return bool(self._lease(keys=[keys.SCHEDULER_LEASE], args=[self.holder, self.lease_ms]))

    def release(self) -> None:
        if self.conn.get(keys.SCHEDULER_LEASE) == self.holder.encode():
            self.conn.delete(keys.SCHEDULER_LEASE)

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Fire what is due at `now`; returns what happened, one entry per schedule acted on."""
        now = self.settings.clock() if now is None else now
        cat = catalog.load(self.conn)
        stored = schedule_runs.stored(self.conn)
        updates: dict[str, float] = {}
        done: list[dict[str, Any]] = []
        live = set()
        for routine in cat.routines.values():
            for sch in routine.schedules:
                f = field(routine, sch)
                live.add(f)
                due = stored.get(f)
                if due is None:  # a new schedule: its first run is in the future
                    updates[f] = sch.next_run(now, routine.stagger) or -1
                    continue
                if due < 0 or due > now:
                    continue
                latest, missed, following = due, [], None
                for t in sch.runs(due, routine.stagger, previous=due):
                    if t > now:
                        following = t
                        break
                    missed.append(latest)
                    latest = t
                if now - latest > GRACE_SECONDS:
                    missed.append(latest)
                    latest = None
                if missed:
                    self._record_missed(routine, missed)
                if latest is not None:
                    done.append(self._fire(routine, sch, latest))
                updates[f] = following if following is not None else -1
        stale = [k for k in stored if k not in live]
        gone = [k.decode() for k in self.conn.hkeys(keys.LAST_SCHEDULED_RUN) if k.decode() not in cat.routines]
        pipe = self.conn.pipeline(transaction=False)
        if gone:
            pipe.hdel(keys.LAST_SCHEDULED_RUN, *gone)
        if updates:
            pipe.hset(keys.SCHEDULES, mapping=updates)
        if stale:
            pipe.hdel(keys.SCHEDULES, *stale)
        pipe.execute()
        return done

    def _fire(self, routine: Routine, sch: Schedule, run_at: float) -> dict[str, Any]:
        previous = self.conn.hget(keys.LAST_SCHEDULED_RUN, routine.key)
        firing = Firing(
            kind="schedule",
            routine=routine.key,
            scheduled_for=iso(run_at),
            previous_run_at=previous.decode() if previous else "",  # "since the last run" needs no state of its own
            claim=keys.schedule_fired(routine.key, sch.id, int(run_at)),
            claim_ttl=2 * keys.DAY,
        )
        outcome = self.starter.fire(firing, lambda cat: [r for r in [cat.routines.get(routine.key)] if r is not None])
        if outcome.sessions:  # a dropped or skipped run did not run: the next one still looks back past it
            self.conn.hset(keys.LAST_SCHEDULED_RUN, routine.key, iso(run_at))
        return {"routine": routine.key, "schedule": sch.id, "run_at": run_at, "duplicate": outcome.duplicate,
                "sessions": outcome.sessions, "dropped": outcome.dropped, "skipped": outcome.skipped}

    def _record_missed(self, routine: Routine, runs: list[float]) -> None:
        # recorded, never silent: one event naming the routine and the last run missed
        self.starter.fire(Firing(kind="schedule", event="schedule.missed", routine=routine.key,
                                 scheduled_for=iso(runs[-1])), lambda cat: [])


def run(settings: Settings) -> None:
    """The process loop: lead, tick, reap, about once a second, until SIGTERM or Ctrl-C.

    A Redis outage is waited out (one line when it ends); reaping resumes only once Redis
    has been back for a heartbeat timeout, so buffered heartbeats land before anyone is judged dead."""
    conn = connect(settings)
    outage = Outage("scheduler", settings.redis_url)
    scheduler = Scheduler(conn, settings)
    recovering = Recoverer(conn, settings) if settings.github_app else None  # missed deliveries (routinely.github.recovery)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last_reap, reached = 0.0, False
    while not stop.is_set():
        try:
            if scheduler.lead():
                scheduler.tick()
                if recovering:
                    recovering.due()  # a pass in a thread of its own, at start and every ROUTINELY_RECOVER_MINUTES
            if time.monotonic() - last_reap > REAP_EVERY_SECONDS and outage.connected_for() >= HEARTBEAT_TIMEOUT_SECONDS:
                reap(conn, settings.clock(), settings.data_dir)
                last_reap = time.monotonic()
            outage.ok()
            reached = True
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            outage.failed(exc)
            outage.wait(conn, stop=stop.is_set, starting=not reached)
        stop.wait(1)
    if recovering:
        recovering.stop()
    try:
        scheduler.release()
    except redis.RedisError:
        pass


def main() -> None:
    """`python -m workers.scheduler` (what `routinely scheduler` becomes)."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"routinely scheduler: {exc}")
    run(settings)


if __name__ == "__main__":
    main()
