"""API trigger tokens: created (shown once), stored only as hashes, checked in constant time, revoked.

Each `create` makes a new trigger id with one token, so a routine can have several live
(trigger, token) pairs while a client rotates; a token opens only its own trigger. A trigger's
creation time is read from its id (a ULID); its last use is one HSET per firing (`used`).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import redis

from routinely.storage import ids, keys
from routinely import when
from routinely.routines.catalog import Catalog
from routinely.routine_file import Routine

TOKEN_PREFIX = "rtn_"
# hash trigger id -> ISO time of its latest firing that reached the start step; HSET by the fire
# endpoint (`used`); no TTL, like keys.API_TRIGGERS (revoked ids stay listed, with their last use)
LAST_USED = keys.API_TRIGGERS_LAST_USED
_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(conn: redis.Redis, routine: Routine) -> tuple[str, str]:
    """A new trigger id and its token for a routine that has an api trigger. Raises ValueError."""
    if not routine.api:
        raise ValueError(f"routine {routine.key} has no api trigger: add `- api: {{}}` to its triggers and apply")
    trigger_id = ids.trigger_id()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    pipe = conn.pipeline(transaction=True)
    pipe.hset(keys.API_TRIGGERS, trigger_id, routine.key)
    pipe.sadd(keys.trigger_tokens(trigger_id), _digest(token))
    pipe.execute()
    return trigger_id, token


def routine_of(conn: redis.Redis, trigger_id: str) -> str | None:
    key = conn.hget(keys.API_TRIGGERS, trigger_id)
    return key.decode() if key else None


def check(conn: redis.Redis, trigger_id: str, token: str) -> bool:
    """True when `token` is a live token of this trigger (constant-time comparison)."""
    given = _digest(token).encode()
    ok = False
    for stored in conn.smembers(keys.trigger_tokens(trigger_id)):
        ok |= hmac.compare_digest(stored, given)
    return ok


def revoke(conn: redis.Redis, catalog: Catalog, ref: str) -> list[str]:
    """Revoke one trigger (by `trig_…` id) or every trigger of a routine; returns the ids revoked.

    Raises LookupError when nothing matches."""
    if ref.startswith("trig_"):
        if routine_of(conn, ref) is None:
            raise LookupError(f"no API trigger {ref!r}")
        revoked = [ref]
    else:
        key = catalog.find(ref).key
        revoked = [t.decode() for t, r in conn.hgetall(keys.API_TRIGGERS).items() if r.decode() == key]
        if not revoked:
            raise LookupError(f"routine {key} has no API tokens")
    # the trigger id stays known, so a call with a revoked token is told its token is bad (401)
    conn.delete(*(keys.trigger_tokens(t) for t in revoked))
    return revoked


def created_at(trigger_id: str) -> str | None:
    """When the trigger (and its token) was made: the milliseconds its ULID id starts with."""
    head = trigger_id.removeprefix("trig_")[:10]  # 10 base32 digits: 50 bits, two zero bits, then the 48-bit time
    if len(head) != 10 or any(c not in _CROCKFORD for c in head):
        return None
    value = 0
    for c in head:
        value = value * 32 + _CROCKFORD[c]
    return when.utc_iso(value / 1000)


def used(conn: redis.Redis, trigger_id: str, now: float) -> None:
    """Record a firing by this trigger's token (one HSET: the fire path stays one round trip more)."""
    conn.hset(LAST_USED, trigger_id, when.iso(now))


def with_dates(conn: redis.Redis, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trigger rows (control.tokens) with `created_at` and `last_used_at` (None: never fired)."""
    if not rows:
        return rows
    last = conn.hmget(LAST_USED, [r["trigger_id"] for r in rows])
    return [{**r, "created_at": created_at(r["trigger_id"]), "last_used_at": at.decode() if at else None}
            for r, at in zip(rows, last)]
