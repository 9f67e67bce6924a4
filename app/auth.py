"""Admin authentication for /api/*, /metrics and the pages. There is no open mode.

Either `Authorization: Bearer ROUTINELY_ADMIN_TOKEN`, or a console session: its cookie
holds only a random id, and the session itself is a record in Redis (keys.console_session,
by the id's digest) with a 12-hour TTL. Signing out deletes the record, so a copy of the
cookie opens nothing afterwards; "sign out everywhere" deletes them all; changing the admin
token ends them too (each record names the token it was opened with, by a digest).
Nothing in a cookie is derived from the admin token, so no cookie lets a guess be checked
offline.

A sign-in is the form (the token in a POST body), or a one-time code from the link
`routinely up` / `routinely sign-in` prints: never the admin token in a URL. Failed
sign-ins — form, link or a wrong Bearer token — are counted per client address (an IPv6
/64); past MAX_FAILURES within keys.SIGN_IN_WINDOW every attempt from there answers 429
with Retry-After, without looking at the token, right or wrong.

A state-changing request made with the cookie must carry the session's CSRF token (form
field `csrf` or header `X-CSRF-Token`); Bearer requests need none (nothing ambient to
forge). The sign-in form's own CSRF token is a random nonce in a cookie of its own,
posted back with the form (double submit): an anonymous visitor stores nothing in Redis.
"""
from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from typing import Any

from flask import Flask, Response, current_app, request

from app.responses import error
from routinely.storage import keys
from routinely import sign_in as sign_in_codes

SESSION_COOKIE = "routinely_session"
LOGIN_COOKIE = "routinely_login"  # the sign-in form's CSRF nonce
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_SESSIONS = 256  # live console sessions; a sign-in past it ends the oldest
MAX_FAILURES = 10  # failed sign-ins per client address per keys.SIGN_IN_WINDOW
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): session ids, nonces, sign-in codes


def configure(app: Flask) -> None:
    """Write this request's cookie changes on its response (sign-in, sign-out, a new nonce)."""
    app.after_request(_write_cookies)


def _state() -> Any:
    return current_app.extensions["routinely"]


def _scratch() -> dict[str, Any]:
    """This request's console state (kept in its environ: an app context, and so `g`, may
    outlive a request)."""
    return request.environ.setdefault("routinely.console", {})


def _secure() -> bool:
    return _state().settings.public_url.startswith("https://")


def _write_cookies(response: Response) -> Response:
    scratch = _scratch()
    if "cookie" in scratch:
        sid = scratch["cookie"]
        if sid:
            response.set_cookie(SESSION_COOKIE, sid, max_age=keys.CONSOLE_SESSION_TTL, httponly=True,
                                samesite="Lax", secure=_secure())
        else:
            response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="Lax", secure=_secure())
    if scratch.get("new_nonce"):
        response.set_cookie(LOGIN_COOKIE, scratch["new_nonce"], httponly=True, samesite="Strict", secure=_secure())
    return response


# -- who is asking: the client address, and its failed sign-ins

def client_address() -> str:
    """The peer's address as throttling counts it: an IPv4 address, or an IPv6 /64 (one
    host owns a whole /64)."""
    raw = request.remote_addr or ""
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def throttled() -> int | None:
    """Seconds until this address may try again, or None when it may try now."""
    conn = _state().conn
    key = keys.sign_in_failures(client_address())
    pipe = conn.pipeline(transaction=False)
    pipe.get(key)
    pipe.ttl(key)
    count, ttl = pipe.execute()
    if count is None or int(count) < MAX_FAILURES:
        return None
    return max(1, ttl if ttl and ttl > 0 else keys.SIGN_IN_WINDOW)


def failed() -> None:
    """Count a failed sign-in from this address (the window starts at its first failure)."""
    key = keys.sign_in_failures(client_address())
    pipe = _state().conn.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, keys.SIGN_IN_WINDOW, nx=True)
    pipe.execute()


def too_many(seconds: int) -> str:
    return f"too many failed sign-ins from your address: try again in {seconds} s"


# -- the admin token and one-time codes

def token_ok(token: str | None) -> bool:
    expected = _state().settings.admin_token
    if not expected or not token:
        return False  # no open mode: without a configured token nothing opens
    return hmac.compare_digest(token.encode(), expected.encode())


def code_ok(code: str | None) -> bool:
    """True once for a live sign-in code (it is spent by this call)."""
    if not _state().settings.admin_token or not code or not _SECRET.fullmatch(code):
        return False
    return sign_in_codes.spend(_state().conn, code)


def bearer() -> str | None:
    """The Authorization header's Bearer token; "" for any other Authorization; None without one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    return header[7:].strip() if header.startswith("Bearer ") else ""


# -- console sessions

def _generation() -> str:
    """Names the admin token a session was opened with: a new token ends every session."""
    return keys.digest("routinely console session\0" + (_state().settings.admin_token or ""))[:16]


def _cookie_id() -> str | None:
    sid = request.cookies.get(SESSION_COOKIE) or ""
    return sid if _SECRET.fullmatch(sid) else None


def current() -> dict[str, str] | None:
    """This request's console session ({"csrf": ...}), or None when not signed in."""
    scratch = _scratch()
    if "session" not in scratch:
        scratch["session"] = None
        sid = _cookie_id()
        if sid and _state().settings.admin_token:
            csrf, gen = _state().conn.hmget(keys.console_session(keys.digest(sid)), "csrf", "gen")
            if csrf and gen and hmac.compare_digest(gen.decode(), _generation()):
                scratch["session"] = {"csrf": csrf.decode(), "digest": keys.digest(sid)}
    return scratch["session"]


def signed_in() -> bool:
    return current() is not None


def sign_in() -> None:
    """Open a new session for this browser (a fresh id: nothing chosen before sign-in
    survives it) and end the oldest past MAX_SESSIONS."""
    state = _state()
    conn, now_ms = state.conn, int(state.settings.clock() * 1000)
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    digest = keys.digest(sid)
    pipe = conn.pipeline(transaction=True)
    pipe.zremrangebyscore(keys.CONSOLE_SESSIONS, "-inf", now_ms)
    pipe.hset(keys.console_session(digest), mapping={"csrf": csrf, "gen": _generation(), "at": now_ms})
    pipe.expire(keys.console_session(digest), keys.CONSOLE_SESSION_TTL)
    pipe.zadd(keys.CONSOLE_SESSIONS, {digest: now_ms + keys.CONSOLE_SESSION_TTL * 1000})
    pipe.zcard(keys.CONSOLE_SESSIONS)
    over = pipe.execute()[-1] - MAX_SESSIONS
    if over > 0:
        _end([member.decode() for member, _ in conn.zpopmin(keys.CONSOLE_SESSIONS, over)])
    _scratch().update(session={"csrf": csrf, "digest": digest}, cookie=sid, new_nonce=None)


def _end(digests: list[str]) -> None:
    if digests:
        conn = _state().conn
        pipe = conn.pipeline(transaction=True)
        pipe.delete(*[keys.console_session(d) for d in digests])
        pipe.zrem(keys.CONSOLE_SESSIONS, *digests)
        pipe.execute()


def sign_out() -> None:
    """End this browser's session: its cookie, replayed anywhere, opens nothing after this."""
    session = current()
    if session:
        _end([session["digest"]])
    _scratch().update(session=None, cookie="")


def sign_out_everywhere() -> int:
    """End every console session (every browser signs in again); returns how many ended."""
    conn = _state().conn
    digests = [d.decode() for d in conn.zrange(keys.CONSOLE_SESSIONS, 0, -1)]
    _end(digests)
    _scratch().update(session=None, cookie="")
    return len(digests)


# -- CSRF

def csrf_token() -> str:
    """The session's CSRF token; before sign-in, the sign-in form's nonce (made on first use)."""
    session = current()
    if session:
        return session["csrf"]
    nonce = request.cookies.get(LOGIN_COOKIE) or ""
    if not _SECRET.fullmatch(nonce):
        nonce = _scratch().get("new_nonce") or secrets.token_urlsafe(32)
        _scratch()["new_nonce"] = nonce
    return nonce


def csrf_ok() -> bool:
    given = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    session = current()
    expected = session["csrf"] if session else request.cookies.get(LOGIN_COOKIE) or ""
    return bool(_SECRET.fullmatch(expected)) and hmac.compare_digest(given.encode(), expected.encode())


# -- the guard

def authorized() -> tuple[str, int] | None:
    """None when the request may go on, else why not: ("token", 0) who are you, ("csrf", 0),
    or ("throttled", seconds). An Authorization header decides alone: a wrong one counts as
    a failed sign-in and never falls back to the cookie."""
    token = bearer()
    if token is not None:
        wait = throttled()
        if wait:
            return "throttled", wait
        if token_ok(token):
            return None
        failed()
        return "token", 0
    if not signed_in():
        return "token", 0
    if request.method not in SAFE_METHODS and not csrf_ok():
        return "csrf", 0
    return None


def require_admin() -> Response | None:
    """before_request hook of the JSON API and /metrics: 401 without the token, 403 on a
    cookie-authenticated change without its CSRF token, 429 while the address is throttled."""
    why = authorized()
    if why is None:
        return None
    if why[0] == "throttled":
        return error(429, too_many(why[1]), {"Retry-After": str(why[1])})
    if why[0] == "csrf":
        return error(403, "missing or wrong CSRF token: reload the page and try again")
    return error(401, "this needs the admin token: send Authorization: Bearer $ROUTINELY_ADMIN_TOKEN")
