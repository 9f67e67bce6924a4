"""Admin authentication for /api/* and the pages (ROUTINELY_ADMIN_TOKEN).

Unset: open — and then the service listens on loopback only (app/gunicorn_conf.py).
"""
from __future__ import annotations

import hmac

from flask import current_app, request

from app.responses import error

COOKIE = "routinely_token"


def presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def token_ok(token: str | None) -> bool:
    expected = current_app.extensions["routinely"].settings.admin_token
    if not expected:
        return True
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())


def require_admin():
    """before_request hook: 401 unless the admin token is presented (when one is set)."""
    if not token_ok(presented_token()):
        return error(401, "this needs ROUTINELY_ADMIN_TOKEN: send Authorization: Bearer TOKEN")
    return None
