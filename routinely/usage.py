"""Usage per account: runs per calendar day (the account's timezone) against the daily cap,
metered runs and drops by reason, for the last 30 days.

Read from the session records (kept 30 days) rather than the daily counters (kept 2 days),
so it costs one pipelined read of the retained sessions; today's count is the cap's own.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis

from routinely import admission, keys, when
from routinely.catalog import Catalog
from routinely.routines_view import drops

DAYS = 30


def usage(conn: redis.Redis, cat: Catalog, now: float) -> list[dict[str, Any]]:
    ids_ = conn.zrangebyscore(keys.SESSIONS, (now - DAYS * keys.DAY - keys.DAY) * 1000, "+inf")
    pipe = conn.pipeline(transaction=False)
    for sid in ids_:
        pipe.hmget(keys.session(sid.decode()), "account", "created_at", "metered")
    runs: Counter[tuple[str, str]] = Counter()
    metered: Counter[tuple[str, str]] = Counter()
    zones = {name: ZoneInfo(a.timezone) for name, a in cat.accounts.items()}
    for account, created, meter in pipe.execute():
        if not account or not created or account.decode() not in zones:
            continue
        name = account.decode()
        day = datetime.fromtimestamp(when.parse_iso(created.decode()), zones[name]).date().isoformat()
        runs[(name, day)] += 1
        if meter == b"1":
            metered[(name, day)] += 1
    routine_drops = _drops_by_account(conn, cat)
    out = []
    for name, account in cat.accounts.items():
        today = datetime.fromtimestamp(now, zones[name]).date()
        days = []
        for back in range(DAYS - 1, -1, -1):
            day = (today - timedelta(days=back)).isoformat()
            days.append({"date": day, "runs": runs[(name, day)], "metered": metered[(name, day)]})
        days[-1]["runs"] = max(days[-1]["runs"], int(conn.get(keys.daily_count(name, today.isoformat())) or 0))
        out.append({
            "account": name,
            "plan": account.plan,
            "daily_cap": account.daily_cap,
            "extra_usage": account.extra_usage,
            "timezone": account.timezone,
            "days": days,
            "runs": sum(d["runs"] for d in days),
            "metered": sum(d["metered"] for d in days),
            "drops": routine_drops.get(name, {}),
            "cap_resets_at": when.utc_iso(now + admission.local_day(account, now)[1]),
        })
    return out


def _drops_by_account(conn: redis.Redis, cat: Catalog) -> dict[str, dict[str, int]]:
    routines = list(cat.routines.values())
    pipe = conn.pipeline(transaction=False)
    for routine in routines:
        pipe.hgetall(keys.drops(routine.key))
    totals: dict[str, Counter[str]] = {}
    for routine, raw in zip(routines, pipe.execute()):
        counts = totals.setdefault(routine.account, Counter())
        for reason, n in drops(raw).items():
            if isinstance(n, int):
                counts[reason] += n
    return {name: dict(c) for name, c in totals.items()}
