"""Routines: a starter file, the schema, apply a file, list them, run one now, pause and resume."""
from __future__ import annotations

import argparse
from importlib import resources
import sys
from pathlib import Path

from cli.common import JSON_HELP, CliError, print_json, redis_for, table, when_text
from routinely.routines import catalog, control, exposure
from routinely.records import routines_view
from routinely.config import Settings
from routinely.routine_file import json_schema, load_yaml


def cmd_apply(args, settings: Settings) -> None:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    data = load_yaml(text)
    cat, diff = catalog.apply(redis_for(settings), data, settings.clock())
    for line in exposure.warnings(cat.routines.values(), settings.github_app):  # applied all the same
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        print_json({"version": cat.version, **diff})
        return
    accounts = diff["accounts"]
    print(f"applied {path}: {len(cat.routines)} routine(s), version {cat.version}"
          f" (added {len(diff['added'])}, changed {len(diff['changed'])}, removed {len(diff['removed'])})"
          + "".join(f"; account {name} {what}" for what in ("added", "changed", "removed") for name in accounts[what]))


def cmd_list(args, settings: Settings) -> None:
    conn = redis_for(settings)
    rows = routines_view.listing(conn, catalog.load(conn), settings)
    if args.json:
        print_json(rows)
        return
    if not rows:
        print("no routines applied: `routinely apply FILE`")
        return
    now = settings.clock()
    cells = []
    for row in rows:
        d = row["drops"]
        total = routines_view.drop_total(d)
        dropped = (f"{total} (last {d['last_reason']}, window reopens {when_text(d['retry_at'], now)})" if total else "-")
        last = row["last_session"]
        cells.append([row["account"], row["name"], "yes" if row["paused"] else "no", "; ".join(row["summary"]),
                      when_text(row["next_run_at"], now, row["schedules"][0]["timezone"]) if row["next_run_at"] else "-",
                      f"{last['status']} {when_text(last['created_at'], now)}" if last else "-",
                      f"{row['runs_today']}/{row['daily_cap']} (resets at {when_text(row['cap_resets_at'], now, row['timezone'])})",
                      dropped])
    table(["ACCOUNT", "NAME", "PAUSED", "TRIGGERS", "NEXT RUN", "LAST SESSION", "TODAY", "DROPPED"], cells)


def cmd_run(args, settings: Settings) -> None:
    conn = redis_for(settings)
    session = control.run_now(settings, conn, args.name, args.text)
    if args.json:
        print_json(session)
    else:
        print(f"{session['id']} {session['url']}")


def cmd_pause(args, settings: Settings) -> None:
    routine = control.set_paused(redis_for(settings), args.routine, args.command == "pause")
    if args.json:
        print_json({"name": routine.name, "account": routine.account, "paused": routine.paused})
    else:
        print(f"{routine.key} {'paused: its triggers are recorded as skipped' if routine.paused else 'resumed'}")


STARTER = Path(__file__).with_name("starter.yml")
SCHEMA = Path(str(resources.files("routinely").joinpath("routines.schema.json")))  # committed; `routinely schema` prints it


def cmd_init(args, settings: Settings | None) -> None:
    """Write the starter routine file (never over an existing one); its first line points
    editors at the committed schema."""
    path = Path(args.file)
    text = STARTER.read_text().replace("{schema}", SCHEMA.as_uri())
    try:
        with path.open("x") as f:
            f.write(text)
    except FileExistsError:
        raise CliError(f"{path} exists: pick another name, or remove it first") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    print(f"wrote {path}: edit its repositories and prompt, then `routinely apply {path}`")


def cmd_schema(args, settings: Settings | None) -> None:
    print_json(json_schema())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the routine file's JSON Schema (editors validate and complete routines.yml with it)")
    p.set_defaults(func=cmd_schema, needs_settings=False)

    p = sub.add_parser("init", help="write a commented starter routine file (default routines.yml)")
    p.add_argument("file", nargs="?", default="routines.yml", help="where to write it (never over an existing file)")
    p.set_defaults(func=cmd_init, needs_settings=False)

    p = sub.add_parser("apply", help="validate and store a routine file, all or nothing")
    p.add_argument("file", help="the routine file (YAML)")
    p.add_argument("--json", action="store_true", help="print {version, added, changed, removed, accounts: {added, changed, removed}}")
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
