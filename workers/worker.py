"""The `worker` process: an RQ worker on Routinely's queue that rides through Redis outages
and stops gracefully.

Jobs run in the worker process itself (SimpleWorker): the installation-token cache then
lives as long as the worker, and a session's own runner enforces its timeout and cancel.

RQ's loop quits when Redis goes away (its heartbeat, state and maintenance calls raise
ConnectionError); `Worker` below is the one place that changes that: those calls note the
outage and carry on, the dequeue retries with a short backoff, and a job whose bookkeeping
failed mid-outage is settled once Redis is back. SIGTERM (or Ctrl-C) stops taking jobs and
gives running sessions ROUTINELY_SHUTDOWN_GRACE_SECONDS; a person's second signal ends them at
once, an echo of the first never does (workers.liveness.StopSignals). A session the grace
cut short is queued again when it did nothing outside (routinely.records.sessions.after_shutdown):
its job goes back on the queue here, once RQ's bookkeeping of this run is done. A stopping
worker waits for an unreachable Redis REDIS_WAIT_SECONDS past the grace, then exits.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone

import redis

from routinely.storage import jobs
from routinely.records import sessions
from routinely.config import ConfigError, Settings
from routinely.storage.store import connect
from workers import sandbox, warm
from workers.liveness import ECHO_SECONDS, StopSignals
from workers.outage import BACKOFF_MAX
from workers.reaper import reap
from workers.run import Runtime
from workers.sandbox import host as sandbox_host
from workers.sandbox.bounds import disk_notice, enforcer

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
REDIS_WAIT_SECONDS = 10.0  # past the grace, a stopping worker's wait for an unreachable Redis (= up's margin)


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

    def unsubscribe(self):
        """RQ's, with a bounded wait: redis-py's PubSubWorkerThread.stop() joins without a timeout,
        and its thread can sit up to RQ's sleep_time (60 s) waiting for the subscription this
        just ended — a stopped worker then outlived its stop by a minute. The thread is a daemon."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            try:
                self.pubsub_thread.stop(timeout=1)
            except TypeError:  # an older redis-py: stop() only clears the flag
                self.pubsub_thread.stop()
                self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def set_shutdown_requested_date(self):
        """Not recorded: RQ calls it inside the signal handler, where a Redis call could wait on a
        dead Redis or on the connection pool's lock the interrupted code holds."""
        return None

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        while self.rt.outage.down and not self._stop_requested:
            self.rt.outage.wait(self.connection, stop=lambda: self._stop_requested)
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self.drained = result is None
        return result

    def execute_job(self, job, queue) -> None:
        while True:
            try:
                super().execute_job(job, queue)
            except _REDIS_DOWN as exc:
                # the session's outcome is the runner's and already written (its outbox waits
                # for Redis); what failed is RQ's bookkeeping around it: settle it once Redis
                # is back, or run the job again if the session never started
                self.rt.outage.failed(exc)
                if not self.rt.outage.wait(self.connection, stop=self.waited_enough):
                    return  # stopping, and Redis stays away: the reaper settles it once Redis is back
                if not self._settle(job):
                    return
                if self.rt.stop_at is None:
                    continue
            if self.rt.stop_at is not None:
                self._requeue(job)  # a session the shutdown sent back to queued is the next worker's
            return

    def waited_enough(self) -> bool:
        """A stopping worker's waits for Redis end REDIS_WAIT_SECONDS after the grace."""
        return self.rt.stop_at is not None and time.monotonic() >= self.rt.stop_at + REDIS_WAIT_SECONDS

    def _requeue(self, job) -> None:
        """Put back on the queue the job of a session the shutdown sent back to queued
        (workers.run, routinely.records.sessions.after_shutdown): after RQ's bookkeeping of this run,
        which would otherwise mark it finished."""
        while True:
            try:
                session = sessions.load(self.connection, job.id)
                if session is not None and session.status == "queued":
                    jobs.requeue(self.connection, job.id)
                return
            except _REDIS_DOWN as exc:
                self.rt.outage.failed(exc)
                if not self.rt.outage.wait(self.connection, stop=self.waited_enough):
                    print(f"routinely worker: Redis stayed away: session {job.id} is queued but its job is not; "
                          f"`routinely sessions cancel {job.id}` and start it again", file=sys.stderr, flush=True)
                    return

    def _settle(self, job) -> bool:
        """Move a finished session's job out of "started"; True when the session is still queued."""
        try:
            session = sessions.load(self.connection, job.id)
            if session is not None and session.status == "queued":
                return True
            if session is not None and session.status not in (None, "running"):  # else gone, or not ours: the reaper fails it if its heartbeat stops
                jobs.settle(self.connection, job.id, session.status == "succeeded", session.reason or "")
        except _REDIS_DOWN as exc:
            self.rt.outage.failed(exc)
        return False

    # -- graceful stop: the process's signals are the Stopper's; RQ only learns to take no more jobs
    def _install_signal_handlers(self):
        pass

    def request_stop(self, signum, frame):
        """No new jobs: RQ's warm stop (raises StopRequested when idle)."""
        self._shutdown_requested_date = datetime.now(timezone.utc)  # RQ records it with the worker
        try:
            self._shutdown()
        except _REDIS_DOWN + (ValueError, AttributeError) as exc:  # in a signal handler: never into the session
            _say(f"recording the stop with RQ failed: {type(exc).__name__}")


def _say(line: str) -> None:
    # from a signal handler: a print could re-enter stderr's buffer mid-write
    os.write(2, f"routinely worker: {line}\n".encode())


class Stopper:
    """The worker process's SIGTERM, SIGINT and SIGQUIT: which stop each asks for is
    StopSignals'; "stop" gives running sessions the grace, "now" ends them. Installed once per
    process, so a signal between two RQ workers (an outage) is taken like any other."""

    def __init__(self, rt: Runtime, grace: float) -> None:
        self.rt, self.grace = rt, grace
        self.signals = StopSignals()
        self.worker: Worker | None = None  # the RQ worker while it works: it must take no more jobs

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self.on_signal)

    def on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        name = signal.Signals(signum).name
        kind = self.signals.kind(signum, now)
        if kind == "echo":
            _say(f"{name}: the same stop (a second Ctrl-C, SIGTERM again {ECHO_SECONDS:g} s or more after the "
                 "first, or SIGQUIT ends running sessions now)")
            return
        first = self.rt.stop_at is None
        if kind == "now" and not first and now >= self.rt.stop_at and self.rt.outage.down:
            self.abandon()  # asked again while it waits for a Redis that is gone
        if kind == "stop":
            self.rt.stop_at = now + self.grace
            _say(f"stopping ({name}); running sessions get {self.grace:g} s before they are ended")
        else:
            self.rt.stop_at = now if first else min(self.rt.stop_at, now)
            _say(f"{name}: ending running sessions now")
        if first:
            threading.Thread(target=self._watch, name="stop watch", daemon=True).start()
            if self.worker is not None:
                self.worker.request_stop(signum, frame)

    def _watch(self) -> None:
        while True:
            time.sleep(0.2)
            if self.rt.outage.down and time.monotonic() >= self.rt.stop_at + REDIS_WAIT_SECONDS:
                self.abandon()

    def abandon(self) -> None:
        """Exit although Redis never came back to take what is left (an outcome, RQ's bookkeeping):
        the reaper fails such a session once Redis is back (its heartbeat stopped)."""
        _say(f"Redis at {self.rt.outage.url} is unreachable and the shutdown grace is over: exiting without "
             "writing what is left; the reaper settles this worker's sessions once Redis is back")
        os._exit(1)


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
    stopper = Stopper(rt, settings.shutdown_grace)
    stopper.install()
    first = True
    while rt.stop_at is None:
        if not rt.outage.wait(rt.conn, stop=lambda: rt.stop_at is not None, starting=first):
            break
        worker = jobs.worker(connect(settings), settings.queue_name, Worker, rt=rt, grace=settings.shutdown_grace)
        stopper.worker = worker
        try:
            if first:  # only at start: after an outage, others' buffered heartbeats are still coming
                reap(rt.conn, settings.clock(), settings.data_dir)
                sandbox.sweep(rt.conn, settings.cgroups)  # cgroups of ended sessions a dead worker left here
                warm.sweep(settings.data_dir, settings.keep_workspaces)  # and the overlays it left mounted
                first = False
            if rt.stop_at is None:  # a signal during the start-up sweep
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
        except jobs.StopRequested:
            break
        except _REDIS_DOWN as exc:  # a call RQ does not retry itself: start over once Redis is back
            rt.outage.failed(exc)
            continue
        finally:
            stopper.worker = None
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
