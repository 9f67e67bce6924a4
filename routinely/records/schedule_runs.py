"""Each schedule's next run as persisted in Redis: written by the scheduler, read by it and the CLI."""
from __future__ import annotations

import redis

from routinely.storage import keys
from routinely.routines.catalog import Catalog
from routinely.routine_file import Routine
from routinely.routines.schedules import Schedule


def field(routine: Routine, schedule: Schedule) -> str:
    """The schedule's field in keys.SCHEDULES."""
    return f"{routine.key}|{schedule.id}"


def stored(conn: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in conn.hgetall(keys.SCHEDULES).items()}


def next_runs(conn: redis.Redis, cat: Catalog, now: float) -> dict[str, float | None]:
    """Each schedule's next run (stagger included): the persisted one, else computed from now."""
    persisted = stored(conn)
    out: dict[str, float | None] = {}
    for routine in cat.routines.values():
        for sch in routine.schedules:
            f = field(routine, sch)
            value = persisted.get(f)
            if value is None:
                value = sch.next_run(now, routine.stagger)
            out[f] = None if value is None or value < 0 else value
    return out
