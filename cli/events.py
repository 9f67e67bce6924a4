"""Events: why a delivery or firing started nothing."""
from __future__ import annotations

import argparse

from cli.common import CliError, print_json, redis_for, when_text
from routinely import catalog, events
from routinely.config import Settings


def cmd_explain(args, settings: Settings) -> None:
    conn = redis_for(settings)
    raw = events.find(conn, args.id)
    if raw is None:
        raise CliError(f"no event or delivery {args.id!r} (kept 7 days): GET /api/events lists them")
    event = events.to_public(raw)
    explanation = events.explain(raw, catalog.load(conn))
    if args.json:
        print_json({**event, "explanation": explanation})
        return
    what = " ".join(x for x in (event["kind"], event["event"], event["repository"], event["routine"]) if x)
    print(f"{event['id']}  {what}  received {when_text(event['received_at'], settings.clock())}")
    if explanation is None:
        print(f"started: {', '.join(event['sessions'])}")
        return
    print(f"started nothing: {explanation['summary']}")
    for row in explanation["routines"]:
        who = f"{row['account']}/{row['name']}" if row.get("account") else row["name"]
        for reason in row["reasons"]:
            print(f"  {who}: {reason}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="why a delivery or firing started nothing: the first failed condition per routine")
    p.add_argument("id", help="an event id (from /api/events) or a GitHub delivery id (X-GitHub-Delivery)")
    p.add_argument("--json", action="store_true", help="print the event with its explanation, as GET /api/events/ID")
    p.set_defaults(func=cmd_explain)
