"""Admission: the limits a firing must pass, in the contract's order, as data for the start script.

The check-and-count itself runs inside the start script (one atomic step in Redis), so any
number of web processes and hosts share exact counts. This module only says which
counters, caps and windows apply at a given instant.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from routinely import keys
from routinely.routine_file import Account, Routine

REASONS = ("routine_rate_limit", "account_rate_limit", "daily_cap")


def _window(scope: str, ident: str, limit: dict[str, int], now: float, reason: str) -> dict[str, Any]:
    per = limit["per_seconds"]
    window = int(now // per)
    remaining = (window + 1) * per - now
    return {
        "key": keys.rate_window(scope, ident, per, window),
        "max": limit["events"],
        "ttl": math.ceil(remaining) + 1,
        "retry_after": max(1, math.ceil(remaining)),
        "reason": reason,
    }


def local_day(account: Account, now: float) -> tuple[str, int]:
    """The account's calendar day at `now` and the seconds until it ends (DST-aware)."""
    tz = ZoneInfo(account.timezone)
    local = datetime.fromtimestamp(now, tz)
    next_midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tz)
    return local.date().isoformat(), max(1, math.ceil(next_midnight.timestamp() - now))


def checks(routine: Routine, account: Account, now: float) -> dict[str, Any]:
    """Limits for one routine's firing: rate windows in order, then the daily cap."""
    day, until_midnight = local_day(account, now)
    return {
        "limits": [
            _window("routine", routine.key, routine.rate_limit, now, "routine_rate_limit"),
            _window("account", account.name, account.rate_limit, now, "account_rate_limit"),
        ],
        "cap": {
            "key": keys.daily_count(account.name, day),
            "max": account.daily_cap,
            "ttl": 2 * keys.DAY,
            "extra_usage": account.extra_usage,
            "retry_after": until_midnight,
        },
        "drops_key": keys.drops(routine.key),
    }
