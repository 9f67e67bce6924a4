"""The service's processes: `up` (all of them), the worker, the scheduler, and a sign-in link."""
from __future__ import annotations

import argparse
import os
import sys

from cli.common import redis_for
from routinely import sign_in
from routinely.config import Settings


def _become(module: str, *argv: str) -> None:
    """Replace this process with `python -m module` (same pid, signals and environment):
    the CLI launches the worker processes without importing them."""
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def cmd_scheduler(args, settings: Settings) -> None:
    _become("workers.scheduler")  # it waits for Redis (one line) rather than exit: a blink must not stop it


def cmd_worker(args, settings: Settings) -> None:
    _become("workers.worker", *(["--burst"] if args.burst else []))


def cmd_sign_in(args, settings: Settings) -> None:
    print(sign_in.link(redis_for(settings), settings.public_url))


def cmd_up(args, settings: Settings | None) -> None:
    from cli.up import up  # the supervisor: only `up` needs it

    sys.exit(up(args.host, args.port, args.workers))


def register(sub: argparse._SubParsersAction) -> None:
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

    p = sub.add_parser("scheduler", help="run the scheduler (Procfile: scheduler)")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("worker", help="run a session worker (Procfile: worker)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=cmd_worker)
