"""The `worker` process: an RQ worker on Routinely's queue.

Jobs run in the worker process itself (SimpleWorker): the installation-token cache then
lives as long as the worker, and a session's own runner enforces its timeout and cancel.
"""
from __future__ import annotations

import sys

from routinely import jobs
from routinely.config import ConfigError, Settings
from workers.reaper import reap
from workers.run import Runtime


def run(settings: Settings, burst: bool = False) -> None:
    rt = Runtime(settings)
    Runtime._current = rt
    reap(rt.conn, settings.clock())
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
