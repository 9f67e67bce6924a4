"""Routines as the pages, the JSON API and `routinely list` show them.

One row per routine: its triggers in words, schedules with their next run, paused, the
last session, today's runs against the account's daily cap and what admission dropped.
`detail` adds the definition as applied, its sessions' index and its API tokens.
"""
from __future__ import annotations

from typing import Any

import redis

from filters.explain import condition
from routinely.firing import admission
from routinely.routines import api_tokens, control
from routinely.storage import keys
from routinely import when
from routinely.routines.catalog import Catalog
from routinely.config import Settings
from routinely.routine_file import Routine, Trigger
from routinely.records.schedule_runs import field, next_runs
from routinely.when import iso

_DAY_NAMES = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
              "sat": "Saturday", "sun": "Sunday"}
_NOT_REASONS = {"last_at", "last_reason", "retry_at_ms"}


def drops(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A drops hash as counts per reason (every known reason, 0 when none) and the last drop."""
    out: dict[str, Any] = {reason: 0 for reason in admission.REASONS}
    for name, value in raw.items():
        if name.decode() not in _NOT_REASONS:
            out[name.decode()] = int(value)
    if raw.get(b"last_at"):
        out["last_at"] = raw[b"last_at"].decode()
        out["last_reason"] = raw[b"last_reason"].decode()
        out["retry_at"] = iso(int(raw[b"retry_at_ms"]) / 1000)
    return out


def drop_total(d: dict[str, Any]) -> int:
    return sum(v for v in d.values() if isinstance(v, int) and not isinstance(v, bool))


def schedule_words(spec: dict[str, Any]) -> str:
    tz = spec.get("timezone", "UTC")
    if "cron" in spec:
        return f"cron {spec['cron']} ({tz})"
    if "at" in spec:
        return f"once at {spec['at'].replace('T', ' ')} ({tz})"
    preset = spec["preset"]
    if preset == "hourly":
        return f"every hour at :{int(spec.get('minute', 0)):02d} ({tz})"
    if preset == "weekly":
        return f"every {_DAY_NAMES.get(spec.get('day', ''), spec.get('day'))} at {spec['time']} ({tz})"
    return f"{'every day' if preset == 'daily' else 'weekdays'} at {spec['time']} ({tz})"


def trigger_words(trigger: Trigger) -> str:
    """One trigger in words: `GitHub pull_request.opened when base_branch equals "main"`."""
    if trigger.api is not None:
        return "API (POST …/fire with a token)"
    if trigger.schedule is not None:
        return "schedule: " + schedule_words(trigger.schedule.compiled.spec)
    text = "GitHub " + " or ".join(trigger.github.events)
    conditions = [condition(f) for f in trigger.github.filters]
    if conditions:
        text += " when " + " and ".join(conditions)
    return text


def schedule_rows(conn: redis.Redis, cat: Catalog, now: float) -> dict[str, list[dict[str, Any]]]:
    """routine key -> its schedules, each with `next_run_at` (ISO 8601 UTC, stagger included)."""
    upcoming = next_runs(conn, cat, now)
    out: dict[str, list[dict[str, Any]]] = {}
    for routine in cat.routines.values():
        items = []
        for sch in routine.schedules:
            at = upcoming[field(routine, sch)]
            items.append({"id": sch.id, **sch.spec, "next_run_at": iso(at) if at else None,
                          "next_run": when.local_and_relative(at, now, sch.spec.get("timezone")) if at else None})
        out[routine.key] = items
    return out


def schedules(conn: redis.Redis, cat: Catalog, now: float) -> list[dict[str, Any]]:
    """What `routinely schedule list --json` and GET /api/schedules show: scheduled routines."""
    by_key = schedule_rows(conn, cat, now)
    rows = []
    for routine in cat.routines.values():
        items = by_key[routine.key]
        if not items:
            continue
        times = [i["next_run_at"] for i in items if i["next_run_at"]]
        rows.append({"name": routine.name, "account": routine.account, "paused": routine.paused,
                     "stagger_seconds": routine.stagger, "schedules": items,
                     "next_run_at": min(times) if times else None})
    return rows


def listing(conn: redis.Redis, cat: Catalog, settings: Settings,
            only: list[Routine] | None = None) -> list[dict[str, Any]]:
    """Every routine (or `only` these) as a row; two pipelined round trips whatever their number."""
    now = settings.clock()
    routines = only if only is not None else list(cat.routines.values())
    pipe = conn.pipeline(transaction=False)
    for routine in routines:
        account = cat.accounts[routine.account]
        pipe.hgetall(keys.drops(routine.key))
        pipe.get(keys.daily_count(account.name, admission.local_day(account, now)[0]))
        pipe.zrevrange(keys.sessions_of(routine.key), 0, 4)
    replies = pipe.execute()
    lasts = _last_sessions(conn, replies[2::3])
    by_key = schedule_rows(conn, cat, now)
    rows = []
    for routine, raw_drops, today, last in zip(routines, replies[0::3], replies[1::3], lasts):
        account = cat.accounts[routine.account]
        items = by_key[routine.key]
        times = [s["next_run_at"] for s in items if s["next_run_at"]]
        resets = now + admission.local_day(account, now)[1]
        d = drops(raw_drops)
        rows.append({
            "name": routine.name,
            "account": routine.account,
            "repositories": routine.repositories,
            "triggers": [t.kind for t in routine.triggers],
            "summary": [trigger_words(t) for t in routine.triggers],
            "schedules": items,
            "next_run_at": min(times) if times else None,
            "paused": routine.paused,
            "rate_limit": routine.rate_limit.to_file(),
            "last_session": last,
            "runs_today": int(today or 0),
            "daily_cap": account.daily_cap,
            "extra_usage": account.extra_usage,
            "cap_resets_at": iso(resets),
            "cap_resets": when.local_and_relative(resets, now, account.timezone),
            "timezone": account.timezone,
            "drops": d,
            # dropping now: the last drop's window has not reopened yet, and its limit, as configured
            # now, is still reached (raising a cap or a rate limit shows at once)
            "dropping": bool(d.get("retry_at")) and when.parse_iso(d["retry_at"]) > now
            and still_reached(conn, d.get("last_reason"), admission.checks(routine, account, now), int(today or 0)),
        })
    return rows


def still_reached(conn: redis.Redis, reason: str | None, checks: admission.Checks, runs_today: int) -> bool:
    """Whether the limit a drop hit is reached under the current configuration (one read at most)."""
    if reason == "daily_cap":
        return not checks.extra_usage and runs_today >= checks.cap.max
    if reason in ("routine_rate_limit", "account_rate_limit"):
        window = checks.routine if reason == "routine_rate_limit" else checks.account
        return int(conn.get(window.key) or 0) >= window.max
    if reason == "daily_budget":
        return checks.budget is not None and float(conn.hget(checks.budget.key, checks.budget.field) or 0) >= checks.budget.max
    return False  # superseded and the like: not a limit that holds firings back


def _last_sessions(conn: redis.Redis, recent: list[list[bytes]]) -> list[dict[str, str] | None]:
    """Each routine's newest session still on record, from the newest few of its own index
    (keys.sessions_of: one routine of one account)."""
    pipe = conn.pipeline(transaction=False)
    for ids_ in recent:
        for sid in ids_:  # two fields, not `sessions.load`: five whole records a routine would bring their prompts along
            pipe.hmget(keys.session(sid.decode()), "status", "created_at")
    found = iter(pipe.execute())
    out: list[dict[str, str] | None] = []
    for ids_ in recent:
        last = None
        for sid in ids_:
            status, created = next(found)
            if last is None and status is not None:
                last = {"id": sid.decode(), "status": status.decode(), "created_at": created.decode()}
        out.append(last)
    return out


def detail(conn: redis.Redis, cat: Catalog, settings: Settings, routine: Routine) -> dict[str, Any]:
    """One routine's row plus its definition as applied and its API triggers (ids only)."""
    row = listing(conn, cat, settings, [routine])[0]
    row["definition"] = routine.to_file()
    row["tokens"] = api_tokens.with_dates(conn, control.tokens(conn, routine))
    return row
