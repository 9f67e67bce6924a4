"""The `routinely` command: a thin layer over the library. Errors: one line on stderr, exit 1."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import redis

from routinely import api_tokens, catalog, routines_view, sessions
from routinely.config import ConfigError, Settings
from routinely.routine_file import ApplyError, load_yaml
from routinely.schedule_runs import field, next_runs
from routinely.setup_cache import SetupCache, public
from routinely.start import FireRefused, Firing, fire_one, iso  # fire_one: re-exported for callers of the CLI's
from routinely.store import connect


class CliError(Exception):
    """Shown as one line on stderr."""


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _conn(settings: Settings) -> redis.Redis:
    conn = connect(settings)
    try:
        conn.ping()
    except redis.RedisError:
        raise CliError(f"cannot reach Redis at {settings.redis_url}: start `routinely up` or set REDIS_URL") from None
    return conn


def cmd_apply(args, settings: Settings) -> None:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    data = load_yaml(text)
    cat, diff = catalog.apply(_conn(settings), data, settings.clock())
    if args.json:
        _print_json({"version": cat.version, **diff})
        return
    print(f"applied {path}: {len(cat.routines)} routine(s), version {cat.version}"
          f" (added {len(diff['added'])}, changed {len(diff['changed'])}, removed {len(diff['removed'])})")


def cmd_list(args, settings: Settings) -> None:
    conn = _conn(settings)
    rows = routines_view.listing(conn, catalog.load(conn))
    if args.json:
        _print_json(rows)
        return
    if not rows:
        print("no routines applied: `routinely apply FILE`")
    for row in rows:
        state = " (paused)" if row["paused"] else ""
        dropped = sum(v for k, v in row["drops"].items() if isinstance(v, int))
        note = f"  dropped: {dropped} (last {row['drops']['last_reason']}, window resets {row['drops']['retry_at']})" if dropped else ""
        print(f"{row['account']}/{row['name']}{state}  triggers: {', '.join(row['triggers'])}  "
              f"repos: {', '.join(row['repositories']) or '-'}{note}")


def _fire(settings: Settings, conn: redis.Redis, ref: str, firing: Firing) -> dict[str, Any]:
    try:
        return fire_one(settings, conn, ref, firing)
    except FireRefused as exc:
        raise CliError(str(exc)) from None


def cmd_run(args, settings: Settings) -> None:
    conn = _conn(settings)
    session = _fire(settings, conn, args.name, Firing(kind="manual", text=args.text))
    if args.json:
        _print_json(session)
    else:
        print(f"{session['id']} {session['url']}")


def cmd_sessions(args, settings: Settings) -> None:
    if args.action == "cancel":
        if not args.id:
            raise CliError("usage: routinely sessions cancel SESSION_ID")
        outcome = sessions.cancel(_conn(settings), args.id, iso(settings.clock()))
        if outcome == "unknown":
            raise CliError(f"no session {args.id!r}: `routinely sessions` lists them")
        if outcome == "finished":
            raise CliError(f"session {args.id} has already finished")
        print(f"{args.id} {outcome}")
        return
    rows = sessions.listing(_conn(settings), settings, args.routine, args.limit)
    if args.json:
        _print_json(rows)
        return
    for s in rows:
        print(f"{s['id']}  {s['status']:<9}  {s['routine']:<24}  {s['trigger'].get('kind', '')}  {s['created_at']}")


def cmd_token(args, settings: Settings) -> None:
    conn = _conn(settings)
    cat = catalog.load(conn)
    try:
        if args.action == "create":
            trigger_id, token = api_tokens.create(conn, cat.find(args.ref))
            if args.json:
                _print_json({"trigger_id": trigger_id, "token": token})
            else:
                print(f"trigger: {trigger_id}\ntoken:   {token}   (shown once)\n"
                      f"fire:    POST {settings.public_url}/v1/claude_code/routines/{trigger_id}/fire")
        else:
            revoked = api_tokens.revoke(conn, cat, args.ref)
            if args.json:
                _print_json({"revoked": revoked})
            else:
                print(f"revoked {len(revoked)} trigger(s): {', '.join(revoked)}")
    except (LookupError, ValueError) as exc:
        raise CliError(str(exc).strip('"')) from None


def _schedule_rows(conn: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    cat = catalog.load(conn)
    upcoming = next_runs(conn, cat, settings.clock())
    rows = []
    for routine in cat.routines.values():
        if not routine.schedules:
            continue
        items = []
        for sch in routine.schedules:
            at = upcoming[field(routine, sch)]
            items.append({"id": sch.id, **sch.spec, "next_run_at": iso(at) if at else None})
        times = [i["next_run_at"] for i in items if i["next_run_at"]]
        rows.append({"routine": routine.name, "account": routine.account, "paused": routine.paused,
                     "stagger_seconds": routine.stagger, "schedules": items, "next_run_at": min(times) if times else None})
    return rows


def cmd_schedule(args, settings: Settings) -> None:
    conn = _conn(settings)
    if args.action == "list":
        rows = _schedule_rows(conn, settings)
        if args.json:
            _print_json(rows)
            return
        if not rows:
            print("no scheduled routines")
        for row in rows:
            for s in row["schedules"]:
                what = s.get("cron") or s.get("at") or s.get("preset")
                print(f"{row['account']}/{row['routine']}  {what} ({s['timezone']})  next {s['next_run_at'] or 'spent'}")
        return
    if not args.routine:
        raise CliError(f"usage: routinely schedule {args.action} ROUTINE")
    cat = catalog.load(conn)
    try:
        routine = cat.find(args.routine)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    if args.action == "run":
        session = _fire(settings, conn, routine.key, Firing(kind="schedule", routine=routine.key,
                                                              scheduled_for=iso(settings.clock())))
        _print_json(session) if args.json else print(f"{session['id']} {session['url']}")
        return
    schedule = _schedule_from_args(args)
    from routinely.schedules import ScheduleError, parse_schedule

    try:  # the new schedule must be valid now (an `at` in the future); the rest was checked when applied
        parse_schedule(schedule, cat.accounts[routine.account].timezone, settings.clock())
    except ScheduleError as exc:
        raise CliError(f"routine {routine.key!r}: {exc}") from None
    data = catalog.as_file(cat.config)
    for spec in data["routines"]:
        if f"{spec['account']}/{spec['name']}" == routine.key:
            spec["triggers"] = [t for t in spec["triggers"] if "schedule" not in t] + [{"schedule": schedule}]
    catalog.apply(conn, data, None)
    rows = [r for r in _schedule_rows(conn, settings) if f"{r['account']}/{r['routine']}" == routine.key]
    _print_json(rows[0]) if args.json else print(f"{routine.key}: next run {rows[0]['next_run_at']}")


def _schedule_from_args(args) -> dict[str, Any]:
    if bool(args.cron) == bool(args.preset):
        raise CliError("schedule update takes --cron EXPR or --preset hourly|daily|weekdays|weekly")
    schedule: dict[str, Any] = {"cron": args.cron} if args.cron else {"preset": args.preset}
    for name in ("time", "day", "minute", "timezone"):
        value = getattr(args, name)
        if value is not None:
            schedule[name] = value
    return schedule


def cmd_cache(args, settings: Settings) -> None:
    """The setup cache of this host's data dir (routinely.setup_cache); no Redis needed."""
    cache = SetupCache(settings.data_dir)
    if args.action == "clear":
        gone = cache.clear(args.routine)
        held = cache.collect()
        note = f" ({len(held)} still in use, deleted when their sessions end)" if held else ""
        print(f"cleared {len(gone)} cached setup(s){note}")
        return
    rows = [public(e, settings.clock()) for e in cache.entries(args.routine)]
    if args.json:
        _print_json(rows)
        return
    if not rows:
        print("no cached setups on this host")
    for row in rows:
        size = f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] is not None else "size pending"
        print(f"{row['key'][:12]}  {row['routine']:<24}  {row['age']} old  last used {row['used_at']}  {size}")


def _become(module: str, *argv: str) -> None:
    """Replace this process with `python -m module` (same pid, signals and environment):
    the CLI launches the worker processes without importing them."""
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def cmd_scheduler(args, settings: Settings) -> None:
    _conn(settings)
    _become("workers.scheduler")


def cmd_worker(args, settings: Settings) -> None:
    _conn(settings)
    _become("workers.worker", *(["--burst"] if args.burst else []))


def cmd_up(args, settings: Settings | None) -> None:
    from routinely.up import up

    sys.exit(up(args.host, args.port, args.workers))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routinely", description="Self-hosted routines for coding agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run Redis (if REDIS_URL is unset), web, worker and scheduler")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workers", type=int, default=2, help="session workers (default 2)")
    p.set_defaults(func=cmd_up, needs_settings=False)

    p = sub.add_parser("apply", help="validate and store a routine file, all or nothing")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("list", help="the applied routines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="start a session of a routine now")
    p.add_argument("name", help="routine name, or ACCOUNT/NAME")
    p.add_argument("--text", help="context passed to the agent, as the API's text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sessions", help="sessions, newest first; `sessions cancel ID` cancels one")
    p.add_argument("action", nargs="?", choices=["cancel"])
    p.add_argument("id", nargs="?")
    p.add_argument("--routine")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("token", help="API trigger tokens: create ROUTINE | revoke ROUTINE|TRIGGER_ID")
    p.add_argument("action", choices=["create", "revoke"])
    p.add_argument("ref", help="routine name (or ACCOUNT/NAME); revoke also takes a trig_… id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("schedule", help="schedules: list | update ROUTINE (--cron|--preset …) | run ROUTINE")
    p.add_argument("action", nargs="?", default="list", choices=["list", "update", "run"])
    p.add_argument("routine", nargs="?")
    p.add_argument("--cron")
    p.add_argument("--preset", choices=["hourly", "daily", "weekdays", "weekly"])
    p.add_argument("--time", help="HH:MM (daily, weekdays, weekly)")
    p.add_argument("--day", help="mon..sun (weekly)")
    p.add_argument("--minute", type=int, help="0..59 (hourly)")
    p.add_argument("--timezone", help="IANA zone; default the account's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("cache", help="this host's cached setups: list [ROUTINE] | clear [ROUTINE]")
    p.add_argument("action", nargs="?", default="list", choices=["list", "clear"])
    p.add_argument("routine", nargs="?", help="routine name or ACCOUNT/NAME; default all")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("scheduler", help="run the scheduler (Procfile: scheduler)")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("worker", help="run a session worker (Procfile: worker)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "needs_settings", True) and settings is None:
            settings = Settings.from_env()
        args.func(args, settings)
    except (CliError, ConfigError, ApplyError) as exc:
        print(f"routinely: {exc}", file=sys.stderr)
        sys.exit(1)
    except redis.RedisError:
        where = settings.redis_url if settings else "REDIS_URL"
        print(f"routinely: Redis at {where} stopped answering: check it and try again", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
