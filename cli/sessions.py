"""Sessions: the listing, one session, cancelling one."""
from __future__ import annotations

import argparse

from cli.common import JSON_HELP, CliError, print_json, redis_for, table, when_text
from routinely.records import sessions
from routinely.config import Settings
from routinely.when import iso


def cmd_sessions(args, settings: Settings) -> None:
    if args.action and not args.id:
        raise CliError(f"usage: routinely sessions {args.action} SESSION_ID")
    if args.action == "show":
        found = sessions.get(redis_for(settings), settings, args.id)
        if found is None:
            raise CliError(f"no session {args.id!r}: `routinely sessions` lists them")
        if args.json:
            print_json(found)
            return
        print(sessions.describe(found, settings.clock()))
        return
    if args.action == "cancel":
        if not args.id:
            raise CliError("usage: routinely sessions cancel SESSION_ID")
        outcome = sessions.cancel(redis_for(settings), args.id, iso(settings.clock()))
        if outcome == "unknown":
            raise CliError(f"no session {args.id!r}: `routinely sessions` lists them")
        if outcome == "finished":
            raise CliError(f"session {args.id} has already finished")
        print(f"{args.id} {outcome}")
        return
    rows = sessions.listing(redis_for(settings), settings, args.routine, args.limit)
    if args.json:
        print_json(rows)
        return
    if not rows:
        print("no sessions")
        return
    now = settings.clock()
    table(["ID", "STATUS", "ACCOUNT", "NAME", "TRIGGER", "CREATED"],
           [[s["id"], s["status"], s["account"], s["routine"], s["trigger"].get("kind", ""), when_text(s["created_at"], now)]
            for s in rows])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sessions", help="sessions, newest first; `sessions show ID` shows one (usage included), `sessions cancel ID` cancels one")
    p.add_argument("action", nargs="?", choices=["show", "cancel"], help="show one session, or cancel a queued or running one")
    p.add_argument("id", nargs="?", help="the session id (session_…)")
    p.add_argument("--routine", help="only this routine's sessions")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100, up to 1000)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_sessions)
