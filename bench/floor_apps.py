"""Calibration apps for bench/ingest.py --compare: what the stack itself costs.

Each is served by the same gunicorn (4 workers, its configured class) and driven by the same wrk script as
Routinely, so the gap between them is the price of each layer:

- `raw`: a bare WSGI callable that reads the body and answers 202 (gunicorn + kernel + wrk).
- `flask_empty`: the same in a Flask route (adds Flask's request handling).
- `flask_minimal`: the least durable work in Flask: HMAC check, JSON decode, and a
  MULTI with a dedup key and a queued job. No routing, admission, sessions or events.
- `wsgi_minimal`: the same work as a bare WSGI callable, the MULTI written as RESP on a
  held socket and read with hiredis (routinely.storage.wire): Probot's work on this stack.

Not part of Routinely; nothing imports this outside bench/.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Callable, Iterable

import orjson
import redis
from flask import Flask, request

SECRET = os.environ.get("GITHUB_WEBHOOK_SECRET", "bench-secret").encode()


def raw(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]


flask_empty = Flask("flask_empty")


@flask_empty.post("/webhooks/github")
def _empty() -> tuple[str, int]:
    request.get_data()
    return "{}", 202


flask_minimal = Flask("flask_minimal")
_conn = redis.Redis.from_url(os.environ["REDIS_URL"])  # bench/ingest.py passes its throwaway server


@flask_minimal.post("/webhooks/github")
def _minimal() -> tuple[str, int]:
    body = request.get_data()
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("X-Hub-Signature-256", "")):
        return '{"error": "bad signature"}', 401
    payload = orjson.loads(body)
    pipe = _conn.pipeline(transaction=True)
    pipe.set("floor:delivery:" + request.headers["X-GitHub-Delivery"], 1, ex=3600)
    pipe.rpush("floor:queue", orjson.dumps({"repo": payload["repository"]["full_name"]}))
    pipe.execute()
    return "{}", 202


_wire = None


def wsgi_minimal(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global _wire
    from routinely.storage.wire import Wire, pack

    if _wire is None:
        _wire = Wire(os.environ["REDIS_URL"])
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, environ.get("HTTP_X_HUB_SIGNATURE_256", "")):
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [b'{"error": "bad signature"}']
    payload = orjson.loads(body)
    _wire.transaction([pack("SET", "floor:delivery:" + environ["HTTP_X_GITHUB_DELIVERY"], 1, "NX", "EX", 3600),
                       pack("RPUSH", "floor:queue", orjson.dumps({"repo": payload["repository"]["full_name"]}))])
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
