"""POST /webhooks/github: verify, dedup, route, admit, start — then answer GitHub.

The door is WSGI middleware in front of Flask (Flask's documented way: wrap
`app.wsgi_app`), not a Flask route: GitHub's deliveries are the one hot path, and Flask's
per-request machinery (request context, routing, response object) cost ~130 µs of the
~300 µs a delivery may take. Every other path goes on to Flask untouched.

Checks run in the contract's order, each with its own answer: 503 (no secret set), 413
(over 25 MB, announced or chunked), 400 (body shorter than its Content-Length), 401
(signature), 400 (event or delivery header), 415 (not JSON), 400 (bad JSON, not an
object), then ping, duplicate (200) or accepted (202); 503 only when Redis is unreachable.
"""
from __future__ import annotations

from logging import Logger
from typing import Any, Callable, Iterable

import orjson
import redis

from app.signature import verify
from filters import EVENT_KINDS
from routinely.firing import gate
from routinely.records import refusals
from routinely.firing.deliveries import DELIVERY_ID, decode, keep_payload

PATH = "/webhooks/github"
MAX_BODY = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB
READ_CHUNK = 1 << 20

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_STATUS = {200: "200 OK", 202: "202 Accepted", 400: "400 Bad Request", 401: "401 Unauthorized",
           405: "405 Method Not Allowed", 413: "413 Payload Too Large", 415: "415 Unsupported Media Type",
           500: "500 Internal Server Error", 503: "503 Service Unavailable"}


class Refusal(Exception):
    """A request answered with a 4xx/5xx before anything was stored; str() is the one line."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def read_body(environ: dict[str, Any], limit: int = MAX_BODY) -> bytes:
    """The request body, whole: Content-Length or chunked, at most `limit` bytes.

    Raises Refusal 413 past the limit (announced or as it arrives) and 400 when fewer
    bytes arrive than Content-Length announced (the client gave up mid-body).
    """
    stream = environ["wsgi.input"]
    raw = environ.get("CONTENT_LENGTH") or ""
    if raw:
        if not (raw.isascii() and raw.isdigit()):
            raise Refusal(400, "Content-Length is not a number of bytes")
        length = int(raw)
        if length > limit:
            raise Refusal(413, f"the body is over {limit // (1024 * 1024)} MB")
        body = stream.read(length) if length else b""
        if len(body) < length:
            raise Refusal(400, f"the body ended after {len(body)} of its {length} bytes (Content-Length)")
        return body
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and not environ.get("wsgi.input_terminated"):
        return b""  # neither framing: no body
    parts, size = [], 0
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise Refusal(413, f"the body is over {limit // (1024 * 1024)} MB")
        parts.append(chunk)


class WebhookDoor:
    """WSGI middleware answering PATH itself and passing everything else to `app`."""

    def __init__(self, app: WSGIApp, state: Any, log: Logger) -> None:
        self.app, self.state, self.log = app, state, log
        self.refusals = refusals.Recorder(state.settings.redis_url)  # the bounded record of refused deliveries

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        headers: tuple[tuple[str, str], ...] = ()
        try:
            status, data = self.receive(environ)
        except Refusal as refusal:
            status, data, headers = refusal.status, {"error": str(refusal)}, refusal.headers
            self.refusals.record(environ, status, str(refusal), bool(self.state.settings.webhook_secret))
        body = orjson.dumps(data)
        start_response(_STATUS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                         *headers])
        return [body]

    def receive(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if environ.get("REQUEST_METHOD") != "POST":
            raise Refusal(405, "method not allowed on this endpoint: GitHub POSTs deliveries", (("Allow", "POST"),))
        settings = self.state.settings
        if not settings.webhook_secret:
            raise Refusal(503, "GITHUB_WEBHOOK_SECRET is not set on this server: set it to the App's webhook secret")
        body = read_body(environ)
        if not verify((settings.webhook_secret, settings.webhook_secret_previous), body,
                      environ.get("HTTP_X_HUB_SIGNATURE_256")):
            raise Refusal(401, "X-Hub-Signature-256 is missing or does not match: check the App's webhook secret")
        event = environ.get("HTTP_X_GITHUB_EVENT")
        delivery = environ.get("HTTP_X_GITHUB_DELIVERY")
        if not event or not delivery:
            raise Refusal(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
        if not DELIVERY_ID.match(delivery):
            raise Refusal(400, "X-GitHub-Delivery is not a delivery id")
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            raise Refusal(415, "the webhook must send application/json: set the App's content type to JSON")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Refusal(400, "the body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise Refusal(400, "the body must be a JSON object")
        if event == "ping":
            return 200, {"ok": True, "zen": payload.get("zen")}
        try:
            return self.start(event, delivery, payload, body)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # GitHub shows the delivery as failed; a redelivery later starts it normally
            self.log.warning("redis unavailable (%s): answered 503 to delivery %s", type(exc).__name__, delivery)
            raise Refusal(503, "the store (Redis) is unavailable; retry shortly") from None
        except Exception:
            self.log.exception("internal error on delivery %s", delivery)
            raise Refusal(500, "internal error; the delivery was not started: redeliver it after the fix") from None

    def start(self, event: str, delivery: str, payload: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any]]:
        firing = decode(event, delivery, payload, body)
        kind, _, action = firing.event.partition(".")
        repository = firing.repository
        if kind in EVENT_KINDS and repository:
            def route(catalog):
                firing.filter_fields = {}
                # who may fire (roles, chain depth) is decided in routinely.firing.gate, after the match; it
                # never asks GitHub: a role not cached is checked by the worker (workers/role_check.py)
                return gate.route(catalog, self.state.conn, self.state.settings,
                                  kind, action or None, repository, payload, firing.filter_fields)
        else:
            def route(catalog):
                return []  # acknowledged and recorded, starts nothing
        outcome = self.state.starter.fire(firing, route)
        keep_payload(self.state.conn, firing, outcome)  # a drop's body, for a replay (routinely.firing.replay)
        if outcome.duplicate:
            return 200, {"delivery": delivery, "duplicate": True}
        return 202, {
            "delivery": delivery,
            "sessions": [{"id": s["id"], "routine": s["routine"]} for s in outcome.sessions],
            "dropped": [{"routine": d["routine"], "reason": d["reason"]} for d in outcome.dropped],
        }
