"""Schedules: list them, replace a routine's schedule, run one now as scheduled."""
from __future__ import annotations

import argparse
from typing import Any

import redis

from cli.common import JSON_HELP, CliError, print_json, redis_for, table, when_text
from routinely.routines import catalog
from routinely.records import routines_view
from routinely.config import Settings
from routinely.routines.schedules import ScheduleError, parse_schedule
from routinely.firing.start import Firing, fire_one
from routinely.when import iso


def _schedule_rows(conn: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    return routines_view.schedules(conn, catalog.load(conn), settings.clock())


def cmd_schedule(args, settings: Settings) -> None:
    conn = redis_for(settings)
    if args.action == "list":
        rows = _schedule_rows(conn, settings)
        if args.json:
            print_json(rows)
            return
        if not rows:
            print("no scheduled routines")
            return
        now = settings.clock()
        table(["ACCOUNT", "NAME", "SCHEDULE", "PAUSED", "NEXT RUN"],
               [[row["account"], row["name"], routines_view.schedule_words(s), "yes" if row["paused"] else "no",
                 when_text(s["next_run_at"], now, s["timezone"]) if s["next_run_at"] else "spent"]
                for row in rows for s in row["schedules"]])
        return
    if not args.routine:
        raise CliError(f"usage: routinely schedule {args.action} ROUTINE")
    cat = catalog.load(conn)
    try:
        routine = cat.find(args.routine)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    if args.action == "run":
        session = fire_one(settings, conn, routine.key, Firing(kind="schedule", routine=routine.key,
                                                              scheduled_for=iso(settings.clock())))
        print_json(session) if args.json else print(f"{session['id']} {session['url']}")
        return
    schedule = _schedule_from_args(args)
    try:  # the new schedule must be valid now (an `at` in the future); the rest was checked when applied
        parse_schedule(schedule, cat.accounts[routine.account].timezone, settings.clock())
    except ScheduleError as exc:
        raise CliError(f"routine {routine.key!r}: {exc}") from None
    data = catalog.as_file(cat.config)
    for spec in data["routines"]:
        if f"{spec['account']}/{spec['name']}" == routine.key:
            spec["triggers"] = [t for t in spec["triggers"] if "schedule" not in t] + [{"schedule": schedule}]
    catalog.apply(conn, data, None)
    rows = [r for r in _schedule_rows(conn, settings) if f"{r['account']}/{r['name']}" == routine.key]
    print_json(rows[0]) if args.json else print(f"{routine.key}: next run {when_text(rows[0]['next_run_at'], settings.clock(), schedule.get('timezone'))}")


def _schedule_from_args(args) -> dict[str, Any]:
    if bool(args.cron) == bool(args.preset):
        raise CliError("schedule update takes --cron EXPR or --preset hourly|daily|weekdays|weekly")
    schedule: dict[str, Any] = {"cron": args.cron} if args.cron else {"preset": args.preset}
    for name in ("time", "day", "minute", "timezone"):
        value = getattr(args, name)
        if value is not None:
            schedule[name] = value
    return schedule


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedule", help="schedules: list | update ROUTINE (--cron|--preset …) | run ROUTINE")
    p.add_argument("action", nargs="?", default="list", choices=["list", "update", "run"],
                   help="list (default), replace a routine's schedule, or run it now as a scheduled run")
    p.add_argument("routine", nargs="?", help="routine name, or ACCOUNT/NAME (update, run)")
    p.add_argument("--cron", help="five-field cron expression")
    p.add_argument("--preset", choices=["hourly", "daily", "weekdays", "weekly"], help="a preset instead of cron")
    p.add_argument("--time", help="HH:MM (daily, weekdays, weekly)")
    p.add_argument("--day", help="mon..sun (weekly)")
    p.add_argument("--minute", type=int, help="0..59 (hourly)")
    p.add_argument("--timezone", help="IANA zone; default the account's")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_schedule)
