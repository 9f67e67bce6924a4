"""API trigger tokens: created (shown once), stored only as hashes, checked in constant time, revoked.

Each `create` makes a new trigger id with one token, so a routine can have several live
(trigger, token) pairs while a client rotates; a token opens only its own trigger.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

import redis

from routinely import ids, keys
from routinely.catalog import Catalog
from routinely.routine_file import Routine

TOKEN_PREFIX = "rtn_"


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
