"""The `worker` process: an RQ worker on Routinely's queue that rides through Redis outages
and stops gracefully.

Jobs run in the worker process itself (SimpleWorker): the installation-token cache then
lives as long as the worker, and a session's own runner enforces its timeout and cancel.

RQ's loop quits when Redis goes away (its heartbeat, state and maintenance calls raise
ConnectionError); `Worker` below is the one place that changes that: those calls note the
outage and carry on, the dequeue retries with a short backoff, and a job whose bookkeeping
failed mid-outage is settled once Redis is back. SIGTERM (or Ctrl-C) stops taking jobs and
gives running sessions ROUTINELY_SHUTDOWN_GRACE_SECONDS; a second signal ends them at once.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import redis

from routinely import jobs, sessions
from routinely.config import ConfigError, Settings
from routinely.store import connect
from workers import sandbox, warm
from workers.outage import BACKOFF_MAX
from workers.reaper import reap
from workers.run import Runtime
from workers.sandbox import host as sandbox_host
from workers.sandbox.bounds import disk_notice, enforcer

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class _QuietOutages(logging.Filter):
    """RQ logs every reconnect attempt; the outage's one line (workers.outage) replaces them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "could not connect to Redis" not in str(record.msg)


class Worker(jobs.SimpleWorker):
    max_connection_wait_time = BACKOFF_MAX

    def __init__(self, queues, rt: Runtime, grace: float, **kwargs) -> None:
        # on a connection of its own (see run): RQ raises the socket timeout for its blocking
        # dequeue, and the runner's writes must keep the short one
        super().__init__(queues, **kwargs)
        self.rt, self.grace = rt, grace
        self.drained = False  # the queue was empty (burst mode ends there)
        self._first_signal = 0.0

    # -- Redis calls that must not end the loop
    def _ride(self, call, *args, **kwargs):
        try:
            result = call(*args, **kwargs)
        except _REDIS_DOWN as exc:
            self.rt.outage.failed(exc)
            return None
        self.rt.outage.ok()
        return result

    def heartbeat(self, *args, **kwargs):
        return self._ride(super().heartbeat, *args, **kwargs)

    def set_state(self, *args, **kwargs):
        return self._ride(super().set_state, *args, **kwargs)

    def check_for_suspension(self, burst: bool):
        return self._ride(super().check_for_suspension, burst)

    def run_maintenance_tasks(self):
        return self._ride(super().run_maintenance_tasks)

    def teardown(self):
        return self._ride(super().teardown)

    def set_shutdown_requested_date(self):  # runs inside the SIGTERM handler: must not raise
        return self._ride(super().set_shutdown_requested_date)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        while self.rt.outage.down and not self._stop_requested:
            self.rt.outage.wait(self.connection, stop=lambda: self._stop_requested)
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self.drained = result is None
        return result

    def execute_job(self, job, queue) -> None:
        while True:
            try:
                return super().execute_job(job, queue)
            except _REDIS_DOWN as exc:
                # the session's outcome is the runner's and already written (its outbox waits
                # for Redis); what failed is RQ's bookkeeping around it: settle it once Redis
                # is back, or run the job again if the session never started
                self.rt.outage.failed(exc)
                self.rt.outage.wait(self.connection)
                if not self._settle(job):
                    return

    def _settle(self, job) -> bool:
        """Move a finished session's job out of "started"; True when the session is still queued."""
        try:
            raw = sessions.get_raw(self.connection, job.id) or {}
            status = raw.get(b"status", b"").decode()
            if status == "queued":
                return True
            if status not in ("", "running"):  # else gone, or not ours: the reaper fails it if its heartbeat stops
                jobs.settle(self.connection, job.id, status == "succeeded", raw.get(b"reason", b"").decode())
        except _REDIS_DOWN as exc:
            self.rt.outage.failed(exc)
        return False

    # -- graceful stop
    def request_stop(self, signum, frame):
        """First SIGTERM/SIGINT: no new jobs; running sessions get the grace period."""
        if self.rt.stop_at is None:
            self._first_signal = time.monotonic()
            self.rt.stop_at = self._first_signal + self.grace
            print(f"routinely worker: stopping; running sessions get {self.grace:g} s before they are ended",
                  file=sys.stderr, flush=True)
        super().request_stop(signum, frame)  # raises StopRequested when idle

    def request_force_stop(self, signum, frame):
        """A second signal (not the echo of the first, as Ctrl-C under `up` sends): end them now."""
        if time.monotonic() - self._first_signal < 1:
            return
        self.rt.stop_at = time.monotonic()


def run(settings: Settings, burst: bool = False) -> None:
    problem = sandbox_host.problem(settings.session_users, os.environ.get("PATH")) if settings.sandbox else None
    if problem:  # fail closed: never run a session with less isolation than the contract says
        print(problem, file=sys.stderr)
        sys.exit(1)
    notice = enforcer(settings.cgroups).notice
    if notice:
        print(notice, file=sys.stderr)
    # sessions' disk limits: counted by a watch (a kernel-capped volume per session is built,
    # workers/sandbox/bounds.Volume, but workspaces do not live on one yet)
    print(disk_notice("workspaces are not on a volume of fixed size"), file=sys.stderr)
    if not settings.sandbox:
        print("routinely: ROUTINELY_SANDBOX=off: sessions run unsandboxed (each says so in its log and on its page)", file=sys.stderr)
    rt = Runtime(settings)
    Runtime._current = rt
    logging.getLogger("rq.worker").addFilter(_QuietOutages())
    first = True
    while rt.stop_at is None:
        if not rt.outage.wait(rt.conn, stop=lambda: rt.stop_at is not None, starting=first):
            break
        worker = jobs.worker(connect(settings), settings.queue_name, Worker, rt=rt, grace=settings.shutdown_grace)
        try:
            if first:  # only at start: after an outage, others' buffered heartbeats are still coming
                reap(rt.conn, settings.clock(), settings.data_dir)
                sandbox.sweep(rt.conn, settings.cgroups)  # cgroups of ended sessions a dead worker left here
                warm.sweep(settings.data_dir, settings.keep_workspaces)  # and the overlays it left mounted
                first = False
            worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
        except jobs.StopRequested:
            break
        except _REDIS_DOWN as exc:  # a call RQ does not retry itself: start over once Redis is back
            rt.outage.failed(exc)
            continue
        if burst and worker.drained:
            break
        if rt.stop_at is None:
            time.sleep(1)  # RQ quit on something else (it logged it): start a fresh worker


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
