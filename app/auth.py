"""Admin authentication for /api/*, /metrics and the pages. There is no open mode.

Either `Authorization: Bearer ROUTINELY_ADMIN_TOKEN`, or the signed, expiring session
cookie the login form sets (Flask's session, keyed by a digest of the admin token: it
never holds the token, and changing the token signs everybody out). A state-changing
request made with the cookie must carry the session's CSRF token (form field `csrf` or
header `X-CSRF-Token`); Bearer requests need none (nothing ambient to forge).
Without an admin token configured nothing opens: every request is refused.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import Flask, current_app, request, session

from app.responses import error

SESSION_COOKIE = "routinely_session"
SESSION_LIFETIME = timedelta(hours=12)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def configure(app: Flask, admin_token: str | None, public_url: str) -> None:
    """Sign session cookies with a key derived from the admin token (shared by every web
    worker and host that has the token, never the token itself); Secure behind https."""
    key = hmac.new(admin_token.encode(), b"routinely console session v1", hashlib.sha256).digest() \
        if admin_token else secrets.token_bytes(32)
    app.secret_key = key
    app.config.update(SESSION_COOKIE_NAME=SESSION_COOKIE, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
                      SESSION_COOKIE_SECURE=public_url.startswith("https://"))


def token_ok(token: str | None) -> bool:
    expected = current_app.extensions["routinely"].settings.admin_token
    if not expected or not token:
        return False  # no open mode: without a configured token nothing opens
    return hmac.compare_digest(token.encode(), expected.encode())


def bearer_ok() -> bool:
    header = request.headers.get("Authorization", "")
    return header.startswith("Bearer ") and token_ok(header[7:].strip())


def signed_in() -> bool:
    return session.get("admin") is True and bool(current_app.extensions["routinely"].settings.admin_token)


def sign_in() -> None:
    session.clear()
    session.permanent = True  # expires after SESSION_LIFETIME (Flask checks the signed age)
    session["admin"] = True
    session["csrf"] = secrets.token_urlsafe(24)


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    """The session's CSRF token, made on first use (the login form has one too)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def csrf_ok() -> bool:
    given = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def authorized() -> str | None:
    """None when the request may go on, else why not: `token` (who are you) or `csrf`."""
    if bearer_ok():
        return None
    if not signed_in():
        return "token"
    if request.method not in SAFE_METHODS and not csrf_ok():
        return "csrf"
    return None


def require_admin():
    """before_request hook of the JSON API and /metrics: 401 without the token, 403 on a
    cookie-authenticated change without its CSRF token."""
    why = authorized()
    if why == "token":
        return error(401, "this needs the admin token: send Authorization: Bearer $ROUTINELY_ADMIN_TOKEN")
    if why == "csrf":
        return error(403, "missing or wrong CSRF token: reload the page and try again")
    return None
