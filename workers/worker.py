"""The `worker` process: an RQ worker on Routinely's queue.

Jobs run in the worker process itself (SimpleWorker): the installation-token cache then
lives as long as the worker, and a session's own runner enforces its timeout and cancel.
"""
from __future__ import annotations

from rq import Queue, SimpleWorker

from routinely.config import Settings
from workers.reaper import reap
from workers.run import Runtime


def run(settings: Settings, burst: bool = False) -> None:
    rt = Runtime(settings)
    Runtime._current = rt
    reap(rt.conn)
    queue = Queue(settings.queue_name, connection=rt.conn)
    SimpleWorker([queue], connection=rt.conn).work(burst=burst, with_scheduler=False, logging_level="WARNING")
