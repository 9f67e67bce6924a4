"""Usage per account: runs per calendar day (the account's timezone) against the daily cap,
metered runs and drops by reason, for the last 30 days.

Read from the session records (kept 30 days) rather than the daily counters (kept 2 days),
in a few script calls inside Redis (sessions.fields_since); today's count is the cap's own.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis

from routinely import admission, keys, sessions, when
from routinely.catalog import Catalog
from routinely.routines_view import drops

DAYS = 30


def usage(conn: redis.Redis, cat: Catalog, now: float) -> list[dict[str, Any]]:
    rows = sessions.fields_since(conn, now - (DAYS + 1) * keys.DAY, "account", "created_at", "metered")
    days_of = {name: _local_days(ZoneInfo(a.timezone), now) for name, a in cat.accounts.items()}
    runs: dict[str, list[int]] = {name: [0] * DAYS for name in days_of}
    metered: dict[str, list[int]] = {name: [0] * DAYS for name in days_of}
    for account, created, meter in rows:
        name = account.decode() if account else None
        if name not in days_of or not created:
            continue
        # which local day: bisect the day's start instants (DST-proof, no per-row zone math)
        i = bisect_right(days_of[name][1], when.parse_iso(created.decode())) - 1
        if 0 <= i < DAYS:
            runs[name][i] += 1
            metered[name][i] += meter == b"1"
    routine_drops = _drops_by_account(conn, cat)
    out = []
    for name, account in cat.accounts.items():
        dates = days_of[name][0]
        days = [{"date": d, "runs": runs[name][i], "metered": metered[name][i]} for i, d in enumerate(dates)]
        days[-1]["runs"] = max(days[-1]["runs"], int(conn.get(keys.daily_count(name, dates[-1])) or 0))
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


def _local_days(tz: ZoneInfo, now: float) -> tuple[list[str], list[float]]:
    """The last DAYS calendar days in `tz` (oldest first) and the instant each one starts."""
    today = datetime.fromtimestamp(now, tz).date()
    dates = [today - timedelta(days=back) for back in range(DAYS - 1, -1, -1)]
    starts = [datetime.combine(d, datetime.min.time(), tz).timestamp() for d in dates]
    return [d.isoformat() for d in dates], starts


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
