"""The `worker` process: an RQ worker on Routinely's queue.

Jobs run in the worker process itself (SimpleWorker): the installation-token cache then
lives as long as the worker, and a session's own runner enforces its timeout and cancel.
"""
from __future__ import annotations

import os
import sys

from rq import Queue, SimpleWorker

from routinely.config import Settings
from workers.reaper import reap
from workers.run import Runtime
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
    reap(rt.conn)
    queue = Queue(settings.queue_name, connection=rt.conn)
    SimpleWorker([queue], connection=rt.conn).work(burst=burst, with_scheduler=False, logging_level="WARNING")
