"""Usage per account: runs per calendar day (the account's timezone) against the daily cap,
metered runs and drops by reason, and the model gateway's tokens and dollars per day, per
routine and per model, for the last 30 days.

Runs are read from the session records (kept 30 days) rather than the daily counters (kept 2
days), in a few script calls inside Redis (sessions.fields_since); today's count is the cap's
own. Tokens and dollars are the gateway's daily hashes (routinely.records.model_usage, kept 40 days),
read in one pipeline: `cost_usd` sums the priced requests only, and `unpriced_requests` counts
the ones whose model had no price (their cost is unknown, never guessed).
"""
from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis

from routinely.firing import admission
from routinely.storage import keys
from routinely.records import model_usage, sessions
from routinely import when
from routinely.routines.catalog import Catalog
from routinely.records.routines_view import drops

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
    spent = _model_usage(conn, cat, {name: d[0] for name, d in days_of.items()})
    out = []
    for name, account in cat.accounts.items():
        dates = days_of[name][0]
        per_day, by_routine, by_model = spent[name]
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
            "usage": _sum(per_day),
            "model_days": [{"date": d, "usage": per_day[i]} for i, d in enumerate(dates)],
            "by_routine": by_routine,
            "by_model": by_model,
        })
    return out


def _model_usage(conn: redis.Redis, cat: Catalog, dates_of: dict[str, list[str]]) -> dict[str, tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per account: its totals per day (oldest first, as `dates_of`), per routine and per model
    over the window (most dollars first), from the gateway's daily hashes in one pipeline."""
    routines_of = {name: sorted(r.key for r in cat.routines.values() if r.account == name) for name in dates_of}
    pipe = conn.pipeline(transaction=False)
    for name, dates in dates_of.items():
        for day in dates:
            pipe.hgetall(keys.usage_day("account", name, day))
        for key in routines_of[name]:
            for day in dates:
                pipe.hgetall(keys.usage_day("routine", key, day))
        for day in dates:
            pipe.hgetall(keys.usage_day(model_usage.MODELS_SCOPE, name, day))
    replies = iter(pipe.execute())
    out = {}
    for name, dates in dates_of.items():
        per_day = [_with_total(model_usage.totals_of(next(replies))) for _ in dates]
        by_routine = [{"routine": key, "usage": _sum(_with_total(model_usage.totals_of(next(replies))) for _ in dates)}
                      for key in routines_of[name]]
        models: dict[str, list[dict[str, Any]]] = {}
        for _ in dates:
            for model, totals in model_usage.split_by_model(next(replies)).items():
                models.setdefault(model, []).append(_with_total(totals))
        by_model = [{"model": model, "usage": _sum(days)} for model, days in models.items()]
        out[name] = (per_day, _most_first(by_routine, "routine"), _most_first(by_model, "model"))
    return out


def _with_total(totals: dict[str, Any]) -> dict[str, Any]:
    return {**totals, "tokens": model_usage.total_tokens(totals)}


def _sum(rows) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": 0, **{name: 0 for name in model_usage.TOKENS}, "tokens": 0,
                           "cost_usd": 0.0, "unpriced_requests": 0}
    for row in rows:
        for name in out:
            out[name] += row[name]
    out["cost_usd"] = round(out["cost_usd"], 9)
    return out


def _most_first(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-r["usage"]["cost_usd"], -r["usage"]["tokens"], r[name]))


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
