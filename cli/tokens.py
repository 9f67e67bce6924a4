"""API trigger tokens: list, create (shown once), revoke."""
from __future__ import annotations

import argparse

from cli.common import JSON_HELP, CliError, print_json, redis_for, table
from routinely.routines import api_tokens, catalog, control
from routinely import when
from routinely.config import Settings


def cmd_token(args, settings: Settings) -> None:
    conn = redis_for(settings)
    cat = catalog.load(conn)
    if args.action == "list":
        rows = api_tokens.with_dates(conn, control.tokens(conn, control.find(conn, args.ref) if args.ref else None))
        if args.json:
            print_json(rows)
        elif not rows:
            print("no API tokens: `routinely token create ROUTINE`")
        else:
            now = settings.clock()
            table(["TRIGGER", "ACCOUNT", "NAME", "STATE", "CREATED", "LAST USED"],
                  [[r["trigger_id"], r["account"], r["name"], "live" if r["live"] else "revoked",
                    _when(r["created_at"], now), _when(r["last_used_at"], now) if r["last_used_at"] else "never"]
                   for r in rows])
        return
    if not args.ref:
        raise CliError(f"usage: routinely token {args.action} ROUTINE")
    try:
        if args.action == "create":
            trigger_id, token = api_tokens.create(conn, cat.find(args.ref))
            if args.json:
                print_json({"trigger_id": trigger_id, "token": token})
            else:
                print(f"trigger: {trigger_id}\ntoken:   {token}   (shown once)\n"
                      f"fire:    POST {settings.public_url}/v1/claude_code/routines/{trigger_id}/fire")
        else:
            revoked = api_tokens.revoke(conn, cat, args.ref)
            if args.json:
                print_json({"revoked": revoked})
            else:
                print(f"revoked {len(revoked)} trigger(s): {', '.join(revoked)}")
    except (LookupError, ValueError) as exc:
        raise CliError(str(exc).strip('"')) from None


def _when(value: str | None, now: float) -> str:
    return when.local_and_relative(when.parse_iso(value), now) if value else "-"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="API trigger tokens: list [ROUTINE] | create ROUTINE | revoke ROUTINE|TRIGGER_ID")
    p.add_argument("action", choices=["list", "create", "revoke"], help="list (ids only), create (token shown once) or revoke")
    p.add_argument("ref", nargs="?", help="routine name (or ACCOUNT/NAME); revoke also takes a trig_… id")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_token)
