"""Redis outages as a long-running process sees them: one line per outage, a backoff to wait with.

Workers and the scheduler never exit because Redis blinked. Every Redis call site that can
ride through reports here (`failed` / `ok`); the first failure opens an outage and the first
success after it closes it with one line naming start, end and duration.
"""
from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone
from typing import Callable, TextIO
from urllib.parse import urlparse, urlunparse

import redis

BACKOFF_START, BACKOFF_MAX = 0.5, 5.0


def safe_url(url: str) -> str:
    """The Redis URL without its password, fit for a log line."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    host = parsed.hostname or ""
    netloc = f"{parsed.username or ''}:***@{host}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


class Outage:
    """Tracks whether Redis is reachable from this process (thread-safe)."""

    def __init__(self, who: str, url: str, out: TextIO | None = None, clock: Callable[[], float] = time.time) -> None:
        self.who, self.url, self.out, self.clock = who, safe_url(url), out, clock
        self._lock = threading.Lock()
        self.since: float | None = None
        self.error = ""
        self.count = 0
        self.back_at: float | None = None  # monotonic time Redis last came back

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.since is not None:
                return
            self.since, self.error = self.clock(), type(exc).__name__

    def ok(self) -> None:
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            start, end = self.since, self.clock()
            self.since, self.count, self.back_at = None, self.count + 1, time.monotonic()
        print(f"routinely {self.who}: Redis at {self.url} was unreachable from {_stamp(start)} to {_stamp(end)} "
              f"({end - start:.1f} s, {self.error}); reconnected", file=self.out or sys.stderr, flush=True)

    def connected_for(self) -> float:
        """Seconds since Redis last came back (infinite when it never went away)."""
        if self.since is not None:
            return 0.0
        return float("inf") if self.back_at is None else time.monotonic() - self.back_at

    def wait(self, conn: redis.Redis, stop: Callable[[], bool] = lambda: False, starting: bool = False) -> bool:
        """Block until Redis answers a PING (backoff between tries); False when `stop()` turned true.

        `starting`: the process has not reached Redis yet; a failure is said at once (one
        line), so that a wrong URL does not look like a hang."""
        delay, announced = BACKOFF_START, False
        while not stop():
            try:
                conn.ping()
                self.ok()
                return True
            except redis.RedisError as exc:
                self.failed(exc)
                if starting and not announced:
                    print(f"routinely {self.who}: cannot reach Redis at {self.url} ({self.error}); waiting for it: "
                          "start it, or set REDIS_URL", file=self.out or sys.stderr, flush=True)
                    announced = True
            end = time.monotonic() + delay
            while time.monotonic() < end and not stop():
                time.sleep(0.05)
            delay = min(delay * 2, BACKOFF_MAX)
        return False
