"""Refused at the door: a bounded record of the last webhook deliveries the receiver refused.

A delivery refused before it was verified and decoded (wrong or missing signature, no
secret on this server, missing headers, not JSON, too large) used to leave only a
Prometheus counter: `routinely explain ID` found nothing. The door now keeps the last
keys.REFUSALS_KEPT of them in one Redis stream (keys.REFUSALS), each entry: time (its
stream id), delivery id, event, reason, status, the door's one-line answer and the source
address — never the body, and nothing a sender controls beyond short, checked header values.

Writing one is a single XADD with an exact MAXLEN through the hot path's raw connection
(routinely.storage.wire): one command in its own round trip, nothing else stored, nothing enqueued,
and the stream can never pass its cap however many refusals arrive. A Redis that does not
answer is not the refused sender's problem: the refusal is answered the same, unrecorded.
"""
from __future__ import annotations

import re
from typing import Any

import redis

from routinely.storage import keys
from routinely.when import iso
from routinely.storage.wire import Wire

# reason -> the words `routinely explain` and the events page show ("refused at the door: …")
REASONS = {
    "signature_mismatch": "signature mismatch — check the App's webhook secret (GITHUB_WEBHOOK_SECRET on this server)",
    "signature_missing": "no X-Hub-Signature-256 — set a webhook secret on the App (the same as GITHUB_WEBHOOK_SECRET)",
    "secret_not_set": "GITHUB_WEBHOOK_SECRET is not set on this server — set it to the App's webhook secret",
    "bad_request": "malformed request",
    "content_type": "not JSON — set the App's webhook content type to application/json",
    "too_large": "the body is over 25 MB",
}
_HEADER_VALUE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # what a delivery id or event name can be
_ADDRESS = re.compile(r"^[0-9A-Fa-f:.]{1,45}$")


def reason_of(status: int, environ: dict[str, Any], secret_set: bool) -> str | None:
    """The reason a door refusal is kept under, or None for answers that are not refused
    deliveries (405 to a GET, a 5xx of our own or of Redis)."""
    if status == 401:
        signature = environ.get("HTTP_X_HUB_SIGNATURE_256") or ""
        return "signature_mismatch" if signature.startswith("sha256=") else "signature_missing"
    if status == 503:
        return None if secret_set else "secret_not_set"
    return {400: "bad_request", 413: "too_large", 415: "content_type"}.get(status)


def _checked(value: Any, pattern: re.Pattern[str] = _HEADER_VALUE) -> str:
    """A header as recorded: kept when it has the shape it should, else "" (never raw bytes
    of a stranger's choosing in the console)."""
    return value if isinstance(value, str) and pattern.match(value) else ""


class Recorder:
    """The door's writer: `record` is one XADD on a per-thread socket."""

    def __init__(self, redis_url: str, kept: int = keys.REFUSALS_KEPT) -> None:
        self._wire = Wire(redis_url)
        self._kept = kept

    def record(self, environ: dict[str, Any], status: int, message: str, secret_set: bool) -> bool:
        """Keep this refusal when it is one (see `reason_of`); False when it was not kept
        (not a refused delivery, or Redis did not answer: the refusal is answered the same)."""
        reason = reason_of(status, environ, secret_set)
        if reason is None:
            return False
        try:
            self._wire.call("XADD", keys.REFUSALS, "MAXLEN", self._kept, "*",
                            "delivery", _checked(environ.get("HTTP_X_GITHUB_DELIVERY")),
                            "event", _checked(environ.get("HTTP_X_GITHUB_EVENT"))[:64],
                            "reason", reason, "status", status, "detail", message[:300],
                            "address", _checked(environ.get("REMOTE_ADDR"), _ADDRESS))
        except redis.RedisError:
            return False
        return True


def _public(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    ms = int(entry_id.split(b"-")[0])
    get = lambda name: fields.get(name, b"").decode(errors="replace")  # noqa: E731
    status = get(b"status")
    return {
        "id": "refused_" + entry_id.decode(),
        "kind": "github",
        "outcome": "refused",
        "delivery": get(b"delivery") or None,
        "event": get(b"event") or None,
        "received_at": iso(ms / 1000),
        "reason": get(b"reason"),
        "status": int(status) if status.isdigit() else None,
        "detail": get(b"detail"),
        "address": get(b"address") or None,
    }


def listing(conn: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest refusals first, at most `limit` (the stream keeps keys.REFUSALS_KEPT)."""
    return [_public(eid, fields) for eid, fields in conn.xrevrange(keys.REFUSALS, count=max(1, limit))]


def find(conn: redis.Redis, ref: str) -> dict[str, Any] | None:
    """The newest refusal of this delivery id (or of this refusal id), or None."""
    if ref.startswith("refused_"):
        got = conn.xrange(keys.REFUSALS, ref[len("refused_"):], ref[len("refused_"):]) if "-" in ref else []
        return _public(*got[0]) if got else None
    if not _HEADER_VALUE.match(ref):
        return None
    for eid, fields in conn.xrevrange(keys.REFUSALS, count=keys.REFUSALS_KEPT):
        if fields.get(b"delivery") == ref.encode():
            return _public(eid, fields)
    return None


def line(refusal: dict[str, Any]) -> str:
    """`refused at the door: signature mismatch — check the App's webhook secret …`"""
    words = REASONS.get(refusal["reason"], refusal["reason"])
    if refusal["reason"] == "bad_request" and refusal.get("detail"):
        words = f"{words}: {refusal['detail']}"
    return f"refused at the door: {words}"


def count(conn: redis.Redis) -> int:
    return int(conn.xlen(keys.REFUSALS))
