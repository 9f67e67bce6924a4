"""Events: why a delivery or firing started nothing (or was refused at the door); replay one."""
from __future__ import annotations

import argparse

from cli.common import CliError, print_json, redis_for, when_text
from routinely.firing import admission, replay
from routinely.routines import catalog
from routinely.records import events, refusals
from routinely.firing.start import Starter
from routinely.config import Settings


def cmd_explain(args, settings: Settings) -> None:
    conn = redis_for(settings)
    raw = events.find(conn, args.id)
    if raw is None:
        refused = refusals.find(conn, args.id)
        if refused is not None:  # no event: the delivery never got past the door
            if args.json:
                print_json(refused)
                return
            print(f"{args.id}  {refused['event'] or 'github'}  received {when_text(refused['received_at'], settings.clock())}"
                  f"{'  from ' + refused['address'] if refused['address'] else ''}")
            print(refusals.line(refused))
            print(f"  answered {refused['status']}: {refused['detail']}")
            return
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


def cmd_replay(args, settings: Settings) -> None:
    conn = redis_for(settings)
    try:
        done = replay.replay(settings, conn, args.event, args.routine, args.force, Starter(conn, settings))
    except replay.ReplayRefused as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print_json(done)
        return
    print(f"{done['event']}  replays {done['replay_of']}{' (forced: admission skipped)' if done['forced'] else ''}")
    for s in done["sessions"]:
        print(f"session {s['id']}  {s['routine']}  {settings.public_url}/sessions/{s['id']}")
    for d in done["dropped"]:
        print(f"{d['routine']}: {admission.drop_message(d['reason'], d.get('retry_after'))}")
    for name in done["skipped"]:
        print(f"skipped {name}: paused")
    if not (done["sessions"] or done["dropped"] or done["skipped"]):
        print(f"started nothing: no routine takes it now (`routinely explain {done['event']}`)")
    if not done["sessions"]:
        raise CliError("the replay started no session")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="why a delivery or firing started nothing: the first failed condition per routine")
    p.add_argument("id", help="an event id (from /api/events) or a GitHub delivery id (X-GitHub-Delivery)")
    p.add_argument("--json", action="store_true", help="print the event with its explanation, as GET /api/events/ID")
    p.set_defaults(func=cmd_explain)

    group = sub.add_parser("events", help="recorded events: replay one")
    events_sub = group.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND",
                                      help="replay: route a recorded event again")
    r = events_sub.add_parser("replay", help="route a recorded event again, through admission (a new event and "
                                             "session linked to it by replay_of)")
    r.add_argument("event", help="an event id (from /api/events) or a GitHub delivery id")
    r.add_argument("--routine", help="only this routine (NAME or ACCOUNT/NAME)")
    r.add_argument("--force", action="store_true", help="skip admission (rate limits, daily cap, budget); recorded as forced")
    r.add_argument("--json", action="store_true", help="print the outcome as POST /api/events/ID/replay answers it")
    r.set_defaults(func=cmd_replay)
