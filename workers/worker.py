"""The `worker` process: an RQ worker on Routinely's queue.

Jobs run in the worker process itself (SimpleWorker): the installation-token cache then
lives as long as the worker, and a session's own runner enforces its timeout and cancel.
"""
from __future__ import annotations

import os
import sys

from routinely import jobs
from routinely.config import ConfigError, Settings
from workers.reaper import reap
from workers.run import Runtime
from workers import sandbox, warm
from workers.sandbox import host as sandbox_host
from workers.sandbox.bounds import enforcer


def run(settings: Settings, burst: bool = False) -> None:
    problem = sandbox_host.problem(settings.session_users, os.environ.get("PATH")) if settings.sandbox else None
    if problem:  # fail closed: never run a session with less isolation than the contract says
        print(problem, file=sys.stderr)
        sys.exit(1)
    notice = enforcer(settings.cgroups).notice
    if notice:
        print(notice, file=sys.stderr)
    if not settings.sandbox:
        print("routinely: ROUTINELY_SANDBOX=off: sessions run unsandboxed (each says so in its log and on its page)", file=sys.stderr)
    rt = Runtime(settings)
    Runtime._current = rt
    reap(rt.conn, settings.clock())
    sandbox.sweep(rt.conn, settings.cgroups)  # cgroups of ended sessions a dead worker left here
    warm.sweep(settings.data_dir, settings.keep_workspaces)  # and the overlays it left mounted
    jobs.worker(rt.conn, settings.queue_name).work(burst=burst, with_scheduler=False, logging_level="WARNING")


def main(argv: list[str] | None = None) -> None:
    """`python -m workers.worker [--burst]` (what `routinely worker` becomes)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"routinely worker: {exc}")
    run(settings, burst="--burst" in argv)


if __name__ == "__main__":
    main()
