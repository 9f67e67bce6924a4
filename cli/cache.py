"""This host's setup cache (no Redis needed)."""
from __future__ import annotations

import argparse

from cli.common import JSON_HELP, print_json, table
from routinely.config import Settings
from workers.warm.cache import SetupCache, public


def cmd_cache(args, settings: Settings) -> None:
    """The setup cache of this host's data dir (workers.warm.cache); no Redis needed."""
    cache = SetupCache(settings.data_dir)
    if args.action == "clear":
        gone = cache.clear(args.routine)
        held = cache.collect()
        note = f" ({len(held)} still in use, deleted when their sessions end)" if held else ""
        print(f"cleared {len(gone)} cached setup(s){note}")
        return
    rows = [public(e, settings.clock()) for e in cache.entries(args.routine)]
    if args.json:
        print_json(rows)
        return
    if not rows:
        print("no cached setups on this host")
        return
    table(["KEY", "ROUTINE", "AGE", "LAST USED", "SIZE"],
           [[row["key"][:12], row["routine"], row["age"], row["used_at"],
             f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] is not None else "size pending"] for row in rows])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="this host's cached setups: list [ROUTINE] | clear [ROUTINE]")
    p.add_argument("action", nargs="?", default="list", choices=["list", "clear"],
                   help="list (default) or clear the cached setups")
    p.add_argument("routine", nargs="?", help="routine name or ACCOUNT/NAME; default all")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_cache)
