"""A WSGI app that answers with what the server handed it: the web worker's tests read the
environ the real app would get (path, query, headers, body), and the worker's pid."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import orjson

SHOWN = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_PROTOCOL",
         "REMOTE_ADDR", "wsgi.url_scheme")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("the echo app fails on purpose")
    if environ["PATH_INFO"] == "/no-length":  # an app that leaves Content-Length to the server
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"abc", b"def"]
    body = environ["wsgi.input"].read()
    seen = {k: environ[k] for k in SHOWN if k in environ}
    seen["headers"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    seen["body"] = body.decode("latin-1")
    seen["pid"] = os.getpid()
    out = orjson.dumps(seen)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
