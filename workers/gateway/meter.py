"""One session's meter: what it has spent, what its budget leaves, when it last asked."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import redis

from routinely.records import model_usage, sessions
from routinely.routines.prices import Prices


@dataclass
class Budget:
    max_cost_usd: float | None = None
    max_tokens: int | None = None


@dataclass
class Meter:
    conn: redis.Redis
    prices: Prices
    session_id: str
    routine_key: str
    account: str
    timezone: str
    budget: Budget = field(default_factory=Budget)
    clock: Callable[[], float] = time.time
    total: dict[str, Any] = field(default_factory=model_usage.empty)
    priced_cost: float = 0.0  # what the priced models cost; the budget's measure when some are unpriced
    last_request: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        """The session's record exists (zeros) from the start, so every page shows it."""
        sessions.write(self.conn, self.session_id, usage=orjson.dumps(self.total))

    def touch(self) -> None:
        self.last_request = time.monotonic()

    def tokens_left(self) -> int | None:
        if self.budget.max_tokens is None:
            return None
        return self.budget.max_tokens - model_usage.total_tokens(self.total)

    def exhausted(self) -> str | None:
        """One line saying which budget is spent, or None while there is some left."""
        left = self.tokens_left()
        if left is not None and left <= 0:
            return f"the session's budget of {self.budget.max_tokens} tokens is spent ({model_usage.total_tokens(self.total)} used)"
        if self.budget.max_cost_usd is not None and self.priced_cost >= self.budget.max_cost_usd:
            return f"the session's budget of ${self.budget.max_cost_usd:g} is spent (${self.priced_cost:.4f} used)"
        return None

    def count(self, model: str | None, tokens: dict[str, int]) -> None:
        """Add one response; durable in Redis when it returns."""
        cost = self.prices.cost(model, tokens)
        with self._lock:
            self.total = model_usage.add(self.total, model, tokens, cost)
            self.priced_cost += cost or 0.0
            model_usage.record(self.conn, self.session_id, self.routine_key, self.account, self.timezone, self.clock(),
                         self.total, model, tokens, cost)
