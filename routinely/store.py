"""The Redis connection: one way to open it, with timeouts that turn an outage into a fast error."""
from __future__ import annotations

import redis

from routinely.config import Settings


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
