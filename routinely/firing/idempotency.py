"""Idempotent fire: `Idempotency-Key` on POST …/fire answers a retried call with the first
call's session, and starts nothing.

One key per (trigger, token, Idempotency-Key) — by the SHA-256 of token and key, so
neither is kept in clear — holding the SHA-256 of the first call's body:

- `claim` SETs it NX as "P <body>" (pending, IDEMPOTENCY_PENDING_TTL): the one caller that
  wins fires; any number of web processes agree, because Redis decides.
- `settle` then SETs "D <body> <session id>" for IDEMPOTENCY_TTL (24 h) when a session was
  made, or deletes the claim when the call was refused (a drop, a paused routine), so a
  retry after `Retry-After` is a new attempt rather than the old refusal.
- A caller that finds "P" waits briefly (up to WAIT_SECONDS) for the session id; one that
  finds another body under the key is refused (409), and nothing is stored.

A process that dies between claim and settle leaves "P" behind for at most
IDEMPOTENCY_PENDING_TTL; the key is then free again.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import orjson
import redis

from routinely.storage import keys

MAX_KEY_CHARS = 255
WAIT_SECONDS = 10.0  # how long a twin waits for the first call's session (a start is milliseconds)
POLL_SECONDS = 0.01


class KeyRefused(Exception):
    """The call may not go on under this key; str() is the one line, `status` 400 or 409."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Held:
    """A claim this call won: fire, then `settle`."""

    key: str
    body: str


def valid(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_CHARS and key.isascii() and key.isprintable()


def body_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def claim(conn: redis.Redis, trigger_id: str, token: str, idem_key: str, raw_body: bytes,
          wait: float = WAIT_SECONDS, clock=time.monotonic, sleep=time.sleep) -> Held | str:
    """Claim `idem_key` for this call: a Held to fire under, or the session id the first
    call with this key and body started. Raises KeyRefused: 400 for a key that is not 1..255
    printable ASCII characters, 409 for another body under the key or a first call still
    firing after `wait` seconds."""
    if not valid(idem_key):
        raise KeyRefused(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters", 400)
    scope = hashlib.sha256(f"{token}\n{idem_key}".encode()).hexdigest()
    key, body = keys.idempotency(trigger_id, scope), body_digest(raw_body)
    deadline = clock() + wait
    while True:
        if conn.set(key, f"P {body}", nx=True, ex=keys.IDEMPOTENCY_PENDING_TTL):
            return Held(key, body)
        got = conn.get(key)
        if got is not None:
            state, seen, *rest = got.decode().split(" ")
            if seen != body:
                raise KeyRefused("this Idempotency-Key was used with another body in the last 24 h: "
                                 "use a new key for a new call", 409)
            if state == "D":
                return rest[0]
        if clock() >= deadline:
            raise KeyRefused("a call with this Idempotency-Key is still starting: retry in a few seconds", 409)
        sleep(POLL_SECONDS)  # the first call is starting: its session id comes in milliseconds


def settle(conn: redis.Redis, held: Held, session_id: str | None) -> None:
    """Record the session the held call made (answered to every retry for 24 h), or free
    the key when it made none."""
    if session_id:
        conn.set(held.key, f"D {held.body} {session_id}", ex=keys.IDEMPOTENCY_TTL)
    else:
        conn.delete(held.key)


def settle_answer(conn: redis.Redis, held: Held, status: int, body: bytes) -> None:
    """`settle` from the fire endpoint's answer: 200 carries the session id; anything else
    (a refusal, an error) made none. A Redis that fails here leaves the claim to expire."""
    session_id = None
    if status == 200:
        session_id = orjson.loads(body).get("claude_code_session_id")
    try:
        settle(conn, held, session_id)
    except redis.RedisError:
        pass
