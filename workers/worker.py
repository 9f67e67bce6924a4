"""The `worker` process: an RQ worker on Routinely's queue."""
from __future__ import annotations

from rq import Queue, Worker

from routinely.config import Settings
from routinely.store import connect


def run(settings: Settings, burst: bool = False) -> None:
    conn = connect(settings)
    queue = Queue(settings.queue_name, connection=conn)
    Worker([queue], connection=conn).work(burst=burst, with_scheduler=False)
