"""The console's one-time sign-in codes: made by `routinely up` / `routinely sign-in`, spent by
GET /login?code=. One place knows where a code is kept (only as its digest)."""
from __future__ import annotations

import secrets

import redis

from routinely.storage import keys

CODE_TTL = keys.SIGN_IN_CODE_TTL


def link(conn: redis.Redis, public_url: str) -> str:
    """A console link that signs a browser in once, within CODE_TTL: a fresh random code. Never
    the admin token: a URL stays in the browser's history."""
    code = secrets.token_urlsafe(32)
    conn.set(keys.sign_in_code(keys.digest(code)), "1", ex=CODE_TTL)
    return f"{public_url}/login?code={code}"


def spend(conn: redis.Redis, code: str) -> bool:
    """True once for a live code: it is gone after this call."""
    return conn.getdel(keys.sign_in_code(keys.digest(code))) is not None
