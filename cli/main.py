"""`routinely`'s parser and its one error path."""
from __future__ import annotations

import argparse
import os
import sys

import redis

from cli import cache, deliver, deliveries, events, processes, routines, schedules, secrets, sessions, tokens
from cli.common import CliError
from routinely.config import ConfigError, Settings
from routinely.routines.control import Refused
from routinely.routine_file import ApplyError

COMMANDS = (processes, routines, sessions, events, deliver, deliveries, tokens, secrets, schedules, cache)  # the order `--help` lists them in


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("routinely")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routinely", description="Self-hosted routines for coding agents: "
                                     "GitHub events, API calls and schedules start sessions of an agent.")
    parser.add_argument("--version", action="version", version=f"routinely {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
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
