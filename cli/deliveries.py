"""Deliveries: recover the ones GitHub made that were never recorded here."""
from __future__ import annotations

import argparse
import re

from cli.common import CliError, print_json, redis_for, table, when_text
from routinely.github import recovery
from routinely.config import Settings
from routinely.when import iso

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def span(text: str) -> float:
    """`30m`, `6h`, `2d` -> seconds; at most GitHub's retention (3 days)."""
    m = _SPAN.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a span: say e.g. 30m, 6h or 2d")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not 0 < seconds <= 3 * 86_400:
        raise argparse.ArgumentTypeError("GitHub keeps deliveries 3 days: --since takes more than 0 and at most 3d")
    return seconds


def positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1")
    return int(text)


def cmd_recover(args, settings: Settings) -> None:
    if not settings.github_app:
        raise CliError("recovery asks GitHub as the App: set GITHUB_APP_ID and GITHUB_PRIVATE_KEY (or _PATH)")
    conn = redis_for(settings)
    try:
        done = recovery.recover(conn, settings, since_seconds=args.since, dry_run=args.dry_run, limit=args.max)
    except recovery.RecoveryError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print_json(done.to_json())
        return
    now = settings.clock()
    rows = [[m.guid, m.event, when_text(iso(m.first_at), now), m.reason, str(m.attempts)] for m in done.asked]
    rows += [[m.guid, m.event, when_text(iso(m.first_at), now), f"refused: {why}", str(m.attempts)]
             for m, why in done.failed]
    if rows:
        table(["DELIVERY", "EVENT", "DELIVERED", "WHY", "ATTEMPTS"], rows)
    print(done.line())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deliveries", help="GitHub's deliveries to this service: recover the missed ones")
    dsub = p.add_subparsers(dest="deliveries_command", required=True, metavar="ACTION",
                            help="recover: ask GitHub again for what it sent and this service never recorded")
    r = dsub.add_parser("recover", help="ask GitHub to redeliver what it delivered and was never recorded (one pass)")
    r.add_argument("--since", type=span, default=6 * 3600, metavar="SPAN",
                   help="how far back to look: 30m, 6h (default), up to 3d (GitHub's retention)")
    r.add_argument("--dry-run", action="store_true", help="ask for nothing: print what would be asked for")
    r.add_argument("--max", type=positive, default=None, metavar="N",
                   help="ask for at most N (default ROUTINELY_RECOVER_MAX)")
    r.add_argument("--json", action="store_true", help="print the pass as one JSON object")
    r.set_defaults(func=cmd_recover)
