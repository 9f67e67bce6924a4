"""Which requests the gateway forwards: the vendors' model endpoints, spelled plainly.

The path is judged as sent, before any matching: percent-escapes of separators and dots,
dot segments, backslashes, empty segments, and anything else that would read differently
once decoded and normalized, are refused. What was checked is then exactly what is
forwarded, so no upstream can resolve it to a path the meter cannot price (batches, files,
fine-tuning, an organization's admin keys).
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

from workers.gateway.vendors import VENDORS

SHOWN_PATH_MAX = 200  # characters of a refused path in the session log
# reachability probes the agents send before their first request: answered by the gateway
# itself (200, empty), never forwarded, so a session's log does not open with a refusal
PROBES = frozenset({("HEAD", "/anthropic/api/hello")})


class Refused(Exception):
    """Not forwarded; str() says why in a few words."""


@dataclass(frozen=True)
class Route:
    vendor: str
    path: str  # under the vendor's upstream, e.g. /v1/messages
    counts_only: bool  # a token count: nothing generated, no output cap to set


def shape_problem(path: str) -> str | None:
    """Why `path` (as sent, without its query) is not plainly itself, or None."""
    lowered = path.lower()
    if not path.startswith("/"):
        return "not an absolute path"
    if "\\" in path or "%5c" in lowered:
        return "a backslash"
    if "%2f" in lowered:
        return "an encoded slash"
    if "%2e" in lowered:
        return "an encoded dot"
    if "//" in path:
        return "an empty segment"
    if any(segment in (".", "..") for segment in path.split("/")):
        return "a dot segment"
    if posixpath.normpath(unquote(path)) != path:
        return "a path not in its plain form"
    return None


def route(method: str, target: str) -> Route:
    """Where a request for `target` (path and query, as sent) goes. Raises Refused."""
    path = target.partition("?")[0]
    problem = shape_problem(path)
    if problem:
        raise Refused(problem)
    vendor, _, rest = path[1:].partition("/")
    rest = "/" + rest
    if vendor not in VENDORS:
        raise Refused(f"no vendor {vendor[:40]!r} (anthropic, openai, gemini)")
    if method != "POST" or not VENDORS[vendor].endpoints.fullmatch(rest):
        raise Refused("not a model endpoint the gateway meters")
    return Route(vendor, rest, rest.endswith(("/count_tokens", ":countTokens")))


def shown(method: str, target: str) -> str:
    """METHOD /path for the session log: no query (it may carry the session's token), bounded."""
    path = target.partition("?")[0]
    if len(path) > SHOWN_PATH_MAX:
        path = path[:SHOWN_PATH_MAX] + "..."
    return f"{method[:16]} {path}".encode("ascii", "backslashreplace").decode()
