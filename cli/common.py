"""What every command shares: the one-line error, JSON and table output, a checked Redis."""
from __future__ import annotations

import sys
from typing import Any

import orjson
import redis

from routinely import when
from routinely.config import Settings, embedded_redis_url
from routinely.storage.store import connect

JSON_HELP = "print the same JSON objects as the HTTP API"


class CliError(Exception):
    """Shown as one line on stderr."""


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def redis_for(settings: Settings) -> redis.Redis:
    """The configured Redis, pinged: an unreachable one is a CliError saying which and what to do."""
    conn = connect(settings)
    try:
        conn.ping()
    except redis.RedisError:
        raise CliError(unreachable(settings)) from None
    return conn


def unreachable(settings: Settings) -> str:
    """The one line for a Redis that does not answer: which one, and what to do."""
    if settings.redis_url == embedded_redis_url(settings.data_dir):
        return (f"cannot reach Redis at {settings.redis_url} (the one `routinely up` runs when REDIS_URL is unset): "
                "start `routinely up`, or set REDIS_URL to your Redis")
    return f"cannot reach Redis at {settings.redis_url} (REDIS_URL): check that it runs and the URL is right"


def when_text(iso_text: str | None, now: float, tz: str | None = None) -> str:
    """`09:00 JST (in 5 h)`; tz None: this machine's zone."""
    return when.local_and_relative(when.parse_iso(iso_text), now, tz) if iso_text else "-"


def table(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, a header row first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
