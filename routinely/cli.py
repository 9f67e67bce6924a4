"""The `routinely` command: a thin layer over the library. Errors: one line on stderr, exit 1."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import redis

from routinely import api_tokens, catalog, control, events, exposure, routines_view, sessions, when
from routinely.config import ConfigError, Settings, embedded_redis_url
from routinely.control import Refused
from routinely.routine_file import ApplyError, load_yaml
from routinely.setup_cache import SetupCache, public
from routinely.start import Firing, fire_one  # fire_one: re-exported for callers of the CLI's
from routinely.store import connect
from routinely.when import iso


class CliError(Exception):
    """Shown as one line on stderr."""


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _conn(settings: Settings) -> redis.Redis:
    conn = connect(settings)
    try:
        conn.ping()
    except redis.RedisError:
        raise CliError(unreachable(settings)) from None
    return conn


def unreachable(settings: Settings) -> str:
    """The one line for a Redis that does not answer: which one, and what to do."""
    if settings.redis_url == embedded_redis_url(settings.data_dir):
        return (f"cannot reach Redis at {settings.redis_url} (the one `routinely up` runs when REDIS_URL is unset): "
                "start `routinely up`, or set REDIS_URL to your Redis")
    return f"cannot reach Redis at {settings.redis_url} (REDIS_URL): check that it runs and the URL is right"


def cmd_apply(args, settings: Settings) -> None:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    data = load_yaml(text)
    cat, diff = catalog.apply(_conn(settings), data, settings.clock())
    for line in exposure.warnings(cat.routines.values()):  # applied all the same: open can be meant
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        _print_json({"version": cat.version, **diff})
        return
    print(f"applied {path}: {len(cat.routines)} routine(s), version {cat.version}"
          f" (added {len(diff['added'])}, changed {len(diff['changed'])}, removed {len(diff['removed'])})")


def cmd_list(args, settings: Settings) -> None:
    conn = _conn(settings)
    rows = routines_view.listing(conn, catalog.load(conn), settings)
    if args.json:
        _print_json(rows)
        return
    if not rows:
        print("no routines applied: `routinely apply FILE`")
        return
    now = settings.clock()
    table = []
    for row in rows:
        d = row["drops"]
        total = routines_view.drop_total(d)
        dropped = (f"{total} (last {d['last_reason']}, window reopens {_when(d['retry_at'], now)})" if total else "-")
        last = row["last_session"]
        table.append([row["account"], row["name"], "yes" if row["paused"] else "no", "; ".join(row["summary"]),
                      _when(row["next_run_at"], now, row["schedules"][0]["timezone"]) if row["next_run_at"] else "-",
                      f"{last['status']} {_when(last['created_at'], now)}" if last else "-",
                      f"{row['runs_today']}/{row['daily_cap']} (resets at {_when(row['cap_resets_at'], now, row['timezone'])})",
                      dropped])
    _table(["ACCOUNT", "NAME", "PAUSED", "TRIGGERS", "NEXT RUN", "LAST SESSION", "TODAY", "DROPPED"], table)


def _when(iso_text: str | None, now: float, tz: str | None = None) -> str:
    """`09:00 JST (in 5 h)`; tz None: this machine's zone."""
    return when.local_and_relative(when.parse_iso(iso_text), now, tz) if iso_text else "-"


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, a header row first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_run(args, settings: Settings) -> None:
    conn = _conn(settings)
    session = control.run_now(settings, conn, args.name, args.text)
    if args.json:
        _print_json(session)
    else:
        print(f"{session['id']} {session['url']}")


def cmd_sessions(args, settings: Settings) -> None:
    if args.action and not args.id:
        raise CliError(f"usage: routinely sessions {args.action} SESSION_ID")
    if args.action == "show":
        found = sessions.get(_conn(settings), settings, args.id)
        if found is None:
            raise CliError(f"no session {args.id!r}: `routinely sessions` lists them")
        if args.json:
            _print_json(found)
            return
        print(sessions.describe(found, settings.clock()))
        return
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
    if not rows:
        print("no sessions")
        return
    now = settings.clock()
    _table(["ID", "STATUS", "ACCOUNT", "NAME", "TRIGGER", "CREATED"],
           [[s["id"], s["status"], s["account"], s["routine"], s["trigger"].get("kind", ""), _when(s["created_at"], now)]
            for s in rows])


def cmd_token(args, settings: Settings) -> None:
    conn = _conn(settings)
    cat = catalog.load(conn)
    if args.action == "list":
        rows = control.tokens(conn, control.find(conn, args.ref) if args.ref else None)
        if args.json:
            _print_json(rows)
        elif not rows:
            print("no API tokens: `routinely token create ROUTINE`")
        else:
            _table(["TRIGGER", "ACCOUNT", "NAME", "STATE"],
                   [[r["trigger_id"], r["account"], r["name"], "live" if r["live"] else "revoked"] for r in rows])
        return
    if not args.ref:
        raise CliError(f"usage: routinely token {args.action} ROUTINE")
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
    return routines_view.schedules(conn, catalog.load(conn), settings.clock())


def cmd_schedule(args, settings: Settings) -> None:
    conn = _conn(settings)
    if args.action == "list":
        rows = _schedule_rows(conn, settings)
        if args.json:
            _print_json(rows)
            return
        if not rows:
            print("no scheduled routines")
            return
        now = settings.clock()
        _table(["ACCOUNT", "NAME", "SCHEDULE", "PAUSED", "NEXT RUN"],
               [[row["account"], row["name"], routines_view.schedule_words(s), "yes" if row["paused"] else "no",
                 _when(s["next_run_at"], now, s["timezone"]) if s["next_run_at"] else "spent"]
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
    rows = [r for r in _schedule_rows(conn, settings) if f"{r['account']}/{r['name']}" == routine.key]
    _print_json(rows[0]) if args.json else print(f"{routine.key}: next run {_when(rows[0]['next_run_at'], settings.clock(), schedule.get('timezone'))}")


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
        return
    _table(["KEY", "ROUTINE", "AGE", "LAST USED", "SIZE"],
           [[row["key"][:12], row["routine"], row["age"], row["used_at"],
             f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] is not None else "size pending"] for row in rows])


def _become(module: str, *argv: str) -> None:
    """Replace this process with `python -m module` (same pid, signals and environment):
    the CLI launches the worker processes without importing them."""
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def cmd_scheduler(args, settings: Settings) -> None:
    _become("workers.scheduler")  # it waits for Redis (one line) rather than exit: a blink must not stop it


def cmd_worker(args, settings: Settings) -> None:
    _become("workers.worker", *(["--burst"] if args.burst else []))


def cmd_sign_in(args, settings: Settings) -> None:
    from routinely.up import sign_in_link

    print(sign_in_link(_conn(settings), settings.public_url))


def cmd_up(args, settings: Settings | None) -> None:
    from routinely.up import up

    sys.exit(up(args.host, args.port, args.workers))


def cmd_pause(args, settings: Settings) -> None:
    routine = control.set_paused(_conn(settings), args.routine, args.command == "pause")
    if args.json:
        _print_json({"name": routine.name, "account": routine.account, "paused": routine.paused})
    else:
        print(f"{routine.key} {'paused: its triggers are recorded as skipped' if routine.paused else 'resumed'}")


def cmd_explain(args, settings: Settings) -> None:
    conn = _conn(settings)
    raw = events.find(conn, args.id)
    if raw is None:
        raise CliError(f"no event or delivery {args.id!r} (kept 7 days): GET /api/events lists them")
    event = events.to_public(raw)
    explanation = events.explain(raw, catalog.load(conn))
    if args.json:
        _print_json({**event, "explanation": explanation})
        return
    what = " ".join(x for x in (event["kind"], event["event"], event["repository"], event["routine"]) if x)
    print(f"{event['id']}  {what}  received {_when(event['received_at'], settings.clock())}")
    if explanation is None:
        print(f"started: {', '.join(event['sessions'])}")
        return
    print(f"started nothing: {explanation['summary']}")
    for row in explanation["routines"]:
        who = f"{row['account']}/{row['name']}" if row.get("account") else row["name"]
        for reason in row["reasons"]:
            print(f"  {who}: {reason}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("routinely")
    except PackageNotFoundError:
        return "unknown"


JSON_HELP = "print the same JSON objects as the HTTP API"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routinely", description="Self-hosted routines for coding agents: "
                                     "GitHub events, API calls and schedules start sessions of an agent.")
    parser.add_argument("--version", action="version", version=f"routinely {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="run Redis (if REDIS_URL is unset), web, worker and scheduler",
                       description="Run everything in the foreground; Ctrl-C stops it. Prints a sign-in link.")
    p.add_argument("--port", type=int, default=8000, help="web port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--workers", type=int, default=2, help="session workers (default 2)")
    p.set_defaults(func=cmd_up, needs_settings=False)

    p = sub.add_parser("sign-in", help="print a console sign-in link: it works once, within 10 minutes",
                       description="Print a one-time link that signs a browser in to the console (PUBLIC_URL). "
                                   "It holds a random code, never the admin token.")
    p.set_defaults(func=cmd_sign_in)

    p = sub.add_parser("apply", help="validate and store a routine file, all or nothing")
    p.add_argument("file", help="the routine file (YAML)")
    p.add_argument("--json", action="store_true", help="print {version, added, changed, removed}")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("list", help="the applied routines: triggers, next run, last session, today's runs, drops")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="start a session of a routine now")
    p.add_argument("name", help="routine name, or ACCOUNT/NAME")
    p.add_argument("--text", help="context passed to the agent, as the API's text")
    p.add_argument("--json", action="store_true", help="print the session object")
    p.set_defaults(func=cmd_run)

    for name, words in (("pause", "record its triggers as skipped until resumed"), ("resume", "let its triggers start sessions again")):
        p = sub.add_parser(name, help=f"{name} a routine: {words} (until the next apply sets it from the file)")
        p.add_argument("routine", help="routine name, or ACCOUNT/NAME")
        p.add_argument("--json", action="store_true", help="print {name, account, paused}")
        p.set_defaults(func=cmd_pause)

    p = sub.add_parser("sessions", help="sessions, newest first; `sessions show ID` shows one (usage included), `sessions cancel ID` cancels one")
    p.add_argument("action", nargs="?", choices=["show", "cancel"], help="show one session, or cancel a queued or running one")
    p.add_argument("id", nargs="?", help="the session id (session_…)")
    p.add_argument("--routine", help="only this routine's sessions")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100, up to 1000)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("explain", help="why a delivery or firing started nothing: the first failed condition per routine")
    p.add_argument("id", help="an event id (from /api/events) or a GitHub delivery id (X-GitHub-Delivery)")
    p.add_argument("--json", action="store_true", help="print the event with its explanation, as GET /api/events/ID")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("token", help="API trigger tokens: list [ROUTINE] | create ROUTINE | revoke ROUTINE|TRIGGER_ID")
    p.add_argument("action", choices=["list", "create", "revoke"], help="list (ids only), create (token shown once) or revoke")
    p.add_argument("ref", nargs="?", help="routine name (or ACCOUNT/NAME); revoke also takes a trig_… id")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_token)

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

    p = sub.add_parser("cache", help="this host's cached setups: list [ROUTINE] | clear [ROUTINE]")
    p.add_argument("action", nargs="?", default="list", choices=["list", "clear"],
                   help="list (default) or clear the cached setups")
    p.add_argument("routine", nargs="?", help="routine name or ACCOUNT/NAME; default all")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
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
        sys.stdout.flush()  # here, where a reader gone early is caught below, not at exit
    except (CliError, ConfigError, ApplyError, Refused) as exc:
        print(f"routinely: {exc}", file=sys.stderr)
        sys.exit(1)
    except redis.RedisError:
        where = settings.redis_url if settings else "REDIS_URL"
        print(f"routinely: Redis at {where} stopped answering: check it and try again", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # `routinely sessions | head -3`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        sys.exit(0)


if __name__ == "__main__":
    main()
