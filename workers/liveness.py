"""When a running session should be stopped although its agent has not exited: canceled,
stalled (no model request and no log line for idle_timeout_minutes), or past its budget
(the gateway refused a request and the agent did not end within a grace period); and which
stop a signal to the worker asks for (StopSignals: the shutdown grace, or now)."""
from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

BUDGET_GRACE_SECONDS = 10  # time for the agent to show the gateway's refusal and exit


class Liveness:
    def __init__(self, idle_minutes: float, canceled: Callable[[], bool]) -> None:
        self.idle_seconds = idle_minutes * 60
        self.canceled = canceled
        self.last_output = time.monotonic()
        self.gateway = None  # a workers.gateway.Gateway once it runs
        self.reason: str | None = None  # canceled | stalled | budget_exceeded

    def output(self) -> None:
        self.last_output = time.monotonic()

    def last_activity(self) -> float:
        return max(self.last_output, self.gateway.last_request if self.gateway else 0.0)

    def should_stop(self) -> bool:
        """process.run's stop check, about once a second."""
        now = time.monotonic()
        if self.canceled():
            self.reason = "canceled"
        elif self.gateway and self.gateway.refused_at and now - self.gateway.refused_at > BUDGET_GRACE_SECONDS:
            self.reason = "budget_exceeded"
        elif now - self.last_activity() > self.idle_seconds:
            self.reason = "stalled"
        return self.reason is not None

    def stalled_line(self) -> str:
        ago = time.monotonic() - self.last_activity()
        at = (datetime.now(timezone.utc) - timedelta(seconds=ago)).strftime("%H:%M:%S UTC")
        return (f"routinely: stalled: no model request and no log line since {at} ({ago / 60:.1f} min; "
                f"idle_timeout_minutes {self.idle_seconds / 60:g}); the session was stopped")


ECHO_SECONDS = 1.5  # a repeated SIGTERM this soon after the first is the same stop, not a person's second


class StopSignals:
    """What a stop signal to a worker (or to `routinely up`) asks for — docs/operations.md, "Stopping".

    `kind` answers "stop" for the first SIGTERM or SIGINT (no new jobs; running sessions get
    the shutdown grace), "now" for a person's second (SIGINT again — a terminal sends one per
    Ctrl-C —, SIGTERM again ECHO_SECONDS or more after the first, or SIGQUIT at any time), and
    "echo" for the same stop told again (SIGTERM again within ECHO_SECONDS, as a supervisor and
    its service manager both send it; or the other of SIGTERM and SIGINT, as a terminal's
    Ctrl-C and a supervisor's SIGTERM for it do, whenever it comes)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.at = 0.0

    def kind(self, signum: int, now: float) -> str:
        if self.first is None:
            self.first, self.at = signum, now
            return "now" if signum == signal.SIGQUIT else "stop"
        if signum == signal.SIGQUIT or (signum == self.first == signal.SIGINT):
            return "now"
        if signum == self.first and now - self.at >= ECHO_SECONDS:
            return "now"
        return "echo"
