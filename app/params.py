"""Query parameters, checked before use: one parser per kind, shared by every endpoint.

Each raises BadParameter (answered 400 with its one line) instead of letting a strange
value reach int() or Redis: `limit=²` is not a number here even though "²".isdigit() is
true, and a stream cursor Redis would refuse is the client's mistake, not an outage.
"""
from __future__ import annotations

import re
from typing import Mapping

from routinely.records.sessions import MAX_LIMIT

DEFAULT_LIMIT = 100
_ASCII_DIGITS = re.compile(r"[0-9]{1,7}")
_CURSOR = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1


class BadParameter(ValueError):
    """A query parameter that cannot be used; str() is the 400's one line."""


def limit(args: Mapping[str, str], default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """`?limit=`: ASCII digits from 1 to `maximum`; absent means `default`."""
    raw = args.get("limit")
    if raw is None:
        return default
    if not _ASCII_DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise BadParameter(f"limit must be a whole number from 1 to {maximum} in ASCII digits")
    return int(raw)


def offset(args: Mapping[str, str], maximum: int = 10**6) -> int:
    """`?offset=`: how many matches to skip, ASCII digits from 0 to `maximum`; absent is 0."""
    raw = args.get("offset")
    if raw is None:
        return 0
    if not _ASCII_DIGITS.fullmatch(raw) or int(raw) > maximum:
        raise BadParameter(f"offset must be a whole number from 0 to {maximum} in ASCII digits")
    return int(raw)


def log_cursor(args: Mapping[str, str], name: str = "after") -> str | None:
    """A log cursor (a Redis stream id, MS-SEQ as in X-Log-Cursor); absent or empty is None."""
    raw = args.get(name)
    if not raw:
        return None
    m = _CURSOR.fullmatch(raw)
    if not m or int(m.group(1)) > _U64 or int(m.group(2)) > _U64:
        raise BadParameter(f"{name} must be a log cursor like 1764600000000-0: the X-Log-Cursor header of an earlier read")
    return raw
