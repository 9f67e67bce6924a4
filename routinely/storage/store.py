"""The Redis connection: one way to open it, with timeouts that turn an outage into a fast error."""
from __future__ import annotations

import os
import threading
from typing import Any

import redis
from redis.connection import AbstractConnection

from routinely.config import Settings


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )


class Line:
    """A connection each thread keeps for the hot path: one start per delivery.

    redis-py's pool and pipeline cost ~100 µs of Python per delivery (checkout polls,
    observability hooks, a Pipeline object); this keeps redis-py's connection, packing,
    parsing, timeouts and health check, and drops the rest. Any error closes the connection,
    so a half-read reply never lines up with the next request's command.
    """

    def __init__(self, conn: redis.Redis) -> None:
        self._pool = conn.connection_pool
        self._local = threading.local()

    def _connection(self) -> AbstractConnection:
        c = getattr(self._local, "connection", None)
        if c is None or c.pid != os.getpid():  # a forked child opens its own
            c = self._local.connection = self._pool.connection_class(**self._pool.connection_kwargs)
        return c

    def call(self, *args: Any) -> Any:
        """One command; its reply, or the Redis error raised."""
        c = self._connection()
        try:
            c.send_command(*args)
            return c.read_response()
        except BaseException:
            c.disconnect()
            raise

    def transaction(self, *commands: tuple[Any, ...]) -> list[Any]:
        """MULTI, the commands and EXEC in one write; EXEC's replies, in which a command's
        runtime error is an exception object (the other commands still ran)."""
        c = self._connection()
        try:
            packed = c.pack_commands([("MULTI",), *commands, ("EXEC",)])
            c.send_packed_command([b"".join(packed)])  # one send, not one per big argument
            for _ in range(len(commands) + 1):
                c.read_response()  # +OK, +QUEUED...; a queueing error raises (EXEC then aborts)
            return c.read_response()
        except BaseException:
            c.disconnect()
            raise
