"""JSON responses, encoded with orjson (the receiver's hot path avoids jsonify), and the
headers every response carries, whichever door answered it.

`SecurityHeaders` is the outermost WSGI middleware (app/__init__.py), so the webhook door
in front of Flask, the JSON API, the pages and Flask's own error pages all get them: the
console cannot be framed (a same-site page could otherwise overlay a click on "Pause"),
nothing is sniffed into a type it was not sent as, no URL leaks to another site in a
Referer, and a page runs only the scripts and styles it was rendered with (a per-response
nonce, `csp_nonce`), so injected markup runs nothing.
"""
from __future__ import annotations

import secrets
from typing import Any, Callable, Iterable

import orjson
from flask import Response, request

NONCE = "routinely.csp_nonce"  # the environ key of this response's nonce, made when a page first asks
HEADERS = (("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype="application/json", headers=headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """One line saying what is wrong and what to do."""
    return json_response({"error": message}, status, headers)


def csp_nonce() -> str:
    """This response's script/style nonce (templates put it on each inline `<script>`/`<style>`)."""
    environ = request.environ
    if NONCE not in environ:
        environ[NONCE] = secrets.token_urlsafe(18)
    return environ[NONCE]


def policy(nonce: str | None) -> str:
    """The Content-Security-Policy: same-origin everything, inline code only with the nonce,
    never framed, forms post only here."""
    own = f" 'nonce-{nonce}'" if nonce else ""
    return (f"default-src 'self'; script-src 'self'{own}; style-src 'self'{own}; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SecurityHeaders:
    """WSGI middleware adding HEADERS and the policy to every response: their one place (no
    route sets them itself): under 1 µs a request on the webhook door's hot path."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.static = [*HEADERS, ("Content-Security-Policy", policy(None))]  # no page asked for a nonce

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def with_headers(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            nonce = environ.get(NONCE)
            added = self.static if nonce is None else [*HEADERS, ("Content-Security-Policy", policy(nonce))]
            return start_response(status, [*headers, *added], *exc_info)

        return self.app(environ, with_headers)
