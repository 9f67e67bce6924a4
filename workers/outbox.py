"""What a running session writes to Redis — log lines, heartbeats, its final outcome — kept in
order while Redis is away and written once it is back.

The agent never waits on Redis: `log` and `beat` return at once, and a background thread
beats and retries every HEARTBEAT_EVERY seconds. `finish` is the one call that waits: the
outcome is never lost, so it retries (with backoff) until Redis takes it.

The log has a cap (ROUTINELY_LOG_MAX_MB, routinely.records.session_log.Cap): past it the session's
output is dropped and counted, the service's own lines still get through, and the last line
says what was dropped. Lines held through an outage are bounded in number and in bytes.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import redis

from routinely.storage import keys
from routinely.records import session_log, sessions, transcript
from routinely.firing import start
from routinely.config import Settings
from routinely.secrets.redact import NOTHING, Redactor
from workers.outage import BACKOFF_MAX, BACKOFF_START, Outage

HEARTBEAT_EVERY = 2.0  # seconds; the reaper's timeout (workers.reaper) is several of these
MAX_PENDING = 50_000  # lines kept through an outage; past it the oldest go (and say so)
MAX_PENDING_BYTES = 8 * 1024 * 1024  # and their bytes: an outage does not grow the worker


class Outbox:
    def __init__(self, conn: redis.Redis, session_id: str, outage: Outage, clock: Callable[[], float] = time.time,
                 log_max_bytes: int = Settings.log_max_mb * 1024 * 1024) -> None:
        self.conn, self.id, self.outage, self.clock = conn, session_id, outage, clock
        self.cap = session_log.Cap(int(log_max_bytes))
        self.redact: Redactor = NOTHING  # the session's secrets and tokens, once known: never stored as they are
        self._lines: list[str] = []  # cleaned (as stored)
        self._pending_bytes = 0
        self._dropped = 0
        self._beat_ms: int | None = None
        self._fields: dict[str, str] = {}  # session record fields to write (last value wins)
        self._ops: list[Callable[[Any], None]] = []  # other writes (transcript entries), in order
        self._buf = threading.Lock()  # guards the pending lines; held only for list moves
        self._writer = threading.Lock()  # one writer at a time keeps lines in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- buffered writes
    def log(self, *lines: str) -> None:
        with self._buf:
            for line in lines:
                self._hold(self.cap.admit(self.redact(line)))
        self._soon()

    def _hold(self, lines: list[str], front: bool = False) -> None:
        """Keep `lines` (cleaned) for the next write; past the bounds the oldest go, counted."""
        if front:
            self._lines[:0] = lines
        else:
            self._lines.extend(lines)
        self._pending_bytes += sum(map(len, lines))  # characters: close enough to bound memory
        cut = max(len(self._lines) - MAX_PENDING, 0)
        gone = sum(map(len, self._lines[:cut]))
        while self._pending_bytes - gone > MAX_PENDING_BYTES:
            gone += len(self._lines[cut])
            cut += 1
        if cut:
            del self._lines[:cut]
            self._pending_bytes -= gone
            self._dropped += cut

    def update(self, **fields: Any) -> None:
        """Set fields of the session's record (as sessions.update), buffered like the log."""
        with self._buf:
            self._fields.update({k: "" if v is None else str(v) for k, v in fields.items()})
        self._soon()

    def _soon(self) -> None:
        # while Redis is away only the heartbeat thread retries: the agent's output is never
        # held up by a connect that times out
        if not self.outage.down:
            self.flush()

    def transcript(self, entries: list[dict[str, Any]]) -> None:
        """Transcript entries of the session, redacted like its log, buffered in order."""
        entries = self.redact.deep(entries)
        self.add(lambda pipe: transcript.append(pipe, self.id, entries))

    def add(self, op: Callable[[Any], None]) -> None:
        """Another write of the session's (`op(pipeline)` adds its commands), buffered in order."""
        with self._buf:
            self._ops.append(op)
        self._soon()

    def beat(self) -> None:
        self._beat_ms = int(self.clock() * 1000)
        self.flush()

    def flush(self) -> bool:
        """Write what is pending in one transaction; False (all kept) when Redis is away
        or another thread is writing (it takes these lines too, in order)."""
        if not self._writer.acquire(blocking=False):
            return False
        try:
            with self._buf:
                lines, dropped, beat, fields, ops = self._lines, self._dropped, self._beat_ms, self._fields, self._ops
                self._lines, self._dropped, self._fields, self._ops, self._pending_bytes = [], 0, {}, [], 0
            if not lines and beat is None and not fields and not ops:
                return True
            pipe = self.conn.pipeline(transaction=True)
            if fields:
                sessions.write(pipe, self.id, **fields)
            for op in ops:
                op(pipe)
            if dropped:
                session_log.append(pipe, self.id, f"routinely: {dropped} log line(s) lost while Redis was unreachable")
            for line in lines:
                session_log.append(pipe, self.id, line)
            if beat is not None:
                pipe.zadd(keys.RUNNING, {self.id: beat}, xx=True)  # never revive a reaped session
            try:
                pipe.execute()
            except redis.RedisError as exc:
                self.outage.failed(exc)
                with self._buf:
                    self._dropped += dropped
                    self._hold(lines, front=True)
                    self._fields = {**fields, **self._fields}
                    self._ops[:0] = ops
                return False
            self.outage.ok()
            if self._beat_ms == beat:
                self._beat_ms = None
            return True
        finally:
            self._writer.release()

    # -- the heartbeat thread
    def start(self) -> None:
        """The first heartbeat (it adds the session to the running set), then one every few seconds."""
        guarded(lambda: self.conn.zadd(keys.RUNNING, {self.id: int(self.clock() * 1000)}), self.outage, None)
        self._thread = threading.Thread(target=self._beating, name=f"heartbeat {self.id}", daemon=True)
        self._thread.start()

    def _beating(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the outcome
    def finish(self, status: str, **fields: Any) -> None:
        """Write the final status (only over `running`), after every pending line.

        Retries until Redis takes it: a session whose agent exited 0 ends `succeeded`. A cut
        log ends with what was dropped (past every bound: it is one line)."""
        self.stop()
        if summary := self.cap.summary(status, fields.get("reason")):
            with self._buf:
                self._lines.append(session_log.clean(summary))
        delay = BACKOFF_START
        while True:
            if self.flush():
                try:
                    sessions.transition(self.conn, self.id, ["running"], status=status, **fields)
                    pipe = self.conn.pipeline(transaction=True)
                    pipe.zrem(keys.RUNNING, self.id)
                    pipe.delete(keys.session_cancel(self.id))
                    pipe.execute()
                    start.release(self.conn, self.id)  # its concurrency group goes to the session waiting for it
                    self.outage.ok()
                    return
                except redis.RedisError as exc:
                    self.outage.failed(exc)
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


def guarded(call: Callable[[], Any], outage: Outage, default: Any) -> Any:
    """`call()`, or `default` when Redis is away (noted in `outage`)."""
    try:
        return call()
    except redis.RedisError as exc:
        outage.failed(exc)
        return default


def patiently(call: Callable[[], Any], outage: Outage, conn: redis.Redis) -> Any:
    """`call()`, waiting out Redis outages: for the reads a session needs before its agent
    starts (the routine, the payload, a token's installation), so a blink does not fail it."""
    while True:
        try:
            result = call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            outage.failed(exc)
            outage.wait(conn)
            continue
        outage.ok()
        return result
