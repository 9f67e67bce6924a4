"""Stored secrets: set (the value from stdin or a file, never an argument), list (never a value),
rm, rotate. A thin layer over routinely.secrets.secret_store, like the admin API."""
from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from cli.common import JSON_HELP, CliError, print_json, redis_for, table
from routinely.routines import catalog
from routinely.config import Settings
from routinely.secrets.secret_store import MAX_VALUE_BYTES, SecretError, SecretStore, scope_of


def _scope(args, conn):
    if not args.routine and not args.account and args.action in ("list", "rotate"):
        return None
    cat = catalog.load(conn)
    return scope_of(cat.accounts, cat.find, args.routine, args.account)


def _value(args) -> str:
    """The value from --file, the terminal (not echoed) or stdin, less one trailing line break."""
    if args.file:
        try:
            raw = Path(args.file).read_bytes()[:MAX_VALUE_BYTES + 2]
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    elif sys.stdin.isatty():
        raw = getpass.getpass(f"value of {args.names[0]} (not shown): ").encode()
    else:
        raw = sys.stdin.buffer.read(MAX_VALUE_BYTES + 2)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise CliError("the value is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


def cmd_secret(args, settings: Settings) -> None:
    conn = redis_for(settings)
    try:
        scope = _scope(args, conn)
        if args.action == "set":
            if len(args.names) != 1:
                raise CliError("usage: routinely secret set NAME [--routine R | --account A] [--file F] (value on stdin)")
            store = SecretStore.of(settings, conn)
            new = store.set(args.names[0], _value(args), scope)
            print(f"{'stored' if new else 'replaced'} {args.names[0]} ({scope})")
        elif args.action == "list":
            rows = SecretStore.of(settings, conn, need_key=False).list(scope)
            if args.json:
                print_json(rows)
            elif not rows:
                print("no stored secrets: `routinely secret set NAME --routine ROUTINE` (value on stdin)")
            else:
                table(["NAME", "SCOPE", "CREATED", "UPDATED", "LAST USED"],
                      [[r["name"], r["scope"], r["created_at"], r["updated_at"], r["last_used_at"] or "-"] for r in rows])
        elif args.action == "rm":
            if not args.names:
                raise CliError("usage: routinely secret rm NAME … [--routine R | --account A]")
            store = SecretStore.of(settings, conn, need_key=False)
            missing = [name for name in args.names if not store.remove(name, scope)]
            removed = [name for name in args.names if name not in missing]
            if removed:
                print(f"removed {', '.join(removed)} ({scope})")
            if missing:
                raise CliError(f"no secret {', '.join(missing)} in {scope}: `routinely secret list` shows them")
        else:
            if args.names:
                raise CliError("usage: routinely secret rotate")
            done, current = SecretStore.of(settings, conn).rotate()
            print(f"re-sealed {done} secret(s) under the current key; {current} already were")
    except SecretError as exc:
        raise CliError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("secret", help="stored secrets: set NAME | list | rm NAME… | rotate (values never shown)")
    p.add_argument("action", choices=["set", "list", "rm", "rotate"],
                   help="set (value on stdin or --file), list (names and dates), rm, rotate (re-seal under the current key)")
    p.add_argument("names", nargs="*", metavar="NAME", help="the secret's name (letters, digits, _)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--routine", metavar="ROUTINE", help="the routine it belongs to (NAME or ACCOUNT/NAME)")
    scope.add_argument("--account", metavar="ACCOUNT", help="the account it belongs to (all its routines may use it)")
    p.add_argument("--file", metavar="F", help="set: read the value from this file instead of stdin")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_secret)
