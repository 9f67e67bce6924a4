"""A gunicorn worker that keeps connections alive: one thread, one event loop, WSGI inline.

gunicorn's sync worker closes every connection after one request ("until someone shows a
buffering proxy that supports Keep-Alive"), so each delivery paid for a TCP handshake, an
accept and a close, and gunicorn's pure-Python request parser on top — ~40% of the web
CPU a delivery cost (README, Speed). This worker serves many connections per process with
`selectors`, parses HTTP/1.1 with httptools (llhttp, the C parser Node.js uses), and runs
the WSGI app synchronously as soon as a request is whole: no threads, no GIL handoffs, the
same one-request-at-a-time model as `sync`, so nothing in the app changes.

What it does like gunicorn: 100-continue, chunked request bodies, HTTP/1.0 and
`Connection: close`, header names with `_` dropped (they would alias `-` in the environ),
`max_requests`, the arbiter's heartbeat, graceful stop on SIGTERM (a request being handled
finishes; idle connections close). What it adds: a body is read whole before the app runs,
capped at MAX_BODY (a larger announced Content-Length is answered at once, from the
headers alone, and the connection closed); a request whose client stops mid-body reaches
the app with what arrived, so the app can say so. Responses are buffered and given a
Content-Length. No TLS: terminate it in front (a reverse proxy), as for `sync`.
"""
from __future__ import annotations

import errno
import io
import os
import selectors
import socket
import sys
import time
from email.utils import formatdate
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

import httptools
from gunicorn.workers import base

from app.webhooks import MAX_BODY  # the largest body any route takes; past it the app answers 413

MAX_HEAD = 64 * 1024  # request line and headers together
STALLED_SECONDS = 30.0  # a request that sends nothing for this long is dropped
RECV = 256 * 1024

_REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_NO_BODY = {204, 304}


class _Request:
    __slots__ = ("method", "url", "headers", "body", "size", "version", "keep_alive", "head_done", "complete",
                 "oversized")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.method = b"GET"
        self.version = "1.1"
        self.keep_alive = True
        self.head_done = False  # request line and headers parsed
        self.complete = False
        self.oversized = False  # announced or sent past MAX_BODY: answered, then the connection closes


class _Connection:
    """One client socket: bytes in, parsed requests out (httptools calls the on_* methods)."""

    def __init__(self, sock: socket.socket, addr: Any, server: tuple[str, str]) -> None:
        self.sock, self.addr, self.server = sock, addr, server
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Request | None = None
        self.ready: list[_Request] = []
        self.head_bytes = 0
        self.last = time.monotonic()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Request()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.current.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        req = self.current
        req.method = self.parser.get_method()
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        req.head_done = True
        expect = False
        for name, value in req.headers:
            lower = name.lower()
            if lower == b"content-length" and value.strip().isdigit() and int(value) > MAX_BODY:
                req.oversized = True
            elif lower == b"expect" and value.strip().lower() == b"100-continue" and req.version == "1.1":
                expect = True
        if req.oversized:  # answered from the headers alone; the body is never read
            req.complete = True
            self.ready.append(req)
        elif expect:
            _send(self.sock, b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req.oversized:
            return
        req.body.append(body)
        req.size += len(body)
        if req.size > MAX_BODY:  # chunked past the cap: the app sees more than it takes and says 413
            req.oversized = req.complete = True
            self.ready.append(req)

    def on_message_complete(self) -> None:
        req = self.current
        self.current = None
        if not req.complete:
            req.complete = True
            self.ready.append(req)


class _HeadTooLarge(Exception):
    pass


def _send(sock: socket.socket, data: bytes) -> None:
    """All of `data`, even when the socket's buffer is full (blocking for that while)."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.settimeout(STALLED_SECONDS)
        try:
            sock.sendall(data[sent:])
        finally:
            sock.setblocking(False)


class KeepAliveWorker(base.Worker):
    """gunicorn worker class `app.keepalive_worker.KeepAliveWorker` (app/gunicorn_conf.py)."""

    def init_process(self) -> None:
        if self.cfg.is_ssl:
            print("routinely: the web server does not terminate TLS: put a TLS proxy in front", file=sys.stderr)
            sys.exit(2)
        super().init_process()

    def run(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.connections: dict[int, _Connection] = {}
        self.server: dict[int, tuple[str, str]] = {}
        for listener in self.sockets:
            listener.setblocking(False)
            name = listener.getsockname()
            self.server[listener.fileno()] = (str(name[0]), str(name[1])) if isinstance(name, tuple) else (str(name), "")
        self.listening = False
        self.listen(True)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, None)
        limit = max(1, self.cfg.worker_connections)
        beat = 0.0
        while self.alive:
            now = time.monotonic()
            if now - beat >= 0.5:  # the arbiter's heartbeat, and the idle sweep
                beat = now
                self.notify()
                self.sweep(now)
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
            for key, _ in self.selector.select(0.5):
                data = key.data
                if data is None:
                    try:
                        os.read(self.PIPE[0], 1)
                    except BlockingIOError:
                        pass
                elif isinstance(data, _Connection):
                    self.readable(data)
                else:
                    self.accept(data)
                if not self.alive:
                    break
            self.listen(len(self.connections) < limit)  # none past worker_connections
        for conn in list(self.connections.values()):
            self.close(conn)

    def listen(self, on: bool) -> None:
        if on != self.listening:
            self.listening = on
            for listener in self.sockets:
                if on:
                    self.selector.register(listener, selectors.EVENT_READ, listener)
                else:
                    self.selector.unregister(listener)

    def accept(self, listener: socket.socket) -> None:
        """One connection per wake-up: every worker is woken, and the idle ones take the rest
        (accepting all at once would leave one worker with every kept-alive connection)."""
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                return
            raise
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock, addr, self.server[listener.fileno()])
        self.connections[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def sweep(self, now: float) -> None:
        """Close connections idle past gunicorn's `keepalive` seconds between requests, or
        stalled past STALLED_SECONDS mid-request (a client that stopped sending)."""
        idle = self.cfg.keepalive
        for conn in list(self.connections.values()):
            quiet = now - conn.last
            if quiet > STALLED_SECONDS or (quiet > idle and conn.current is None):
                self.close(conn)

    def close(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass

    def readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        conn.last = time.monotonic()
        if not data:  # the client is done sending: a request cut short mid-body still gets its answer
            req = conn.current
            if req is not None and req.head_done and not req.complete:
                req.complete, req.keep_alive = True, False
                self.respond(conn, req)
            self.close(conn)
            return
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse(conn, 400, "protocol upgrades are not served here")
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self.refuse(conn, 431, "the request's headers are too large")
                return
            raise
        except httptools.HttpParserError:
            self.refuse(conn, 400, "the request is not valid HTTP/1.1")
            return
        while conn.ready and conn.sock.fileno() >= 0:
            req = conn.ready.pop(0)
            if not self.respond(conn, req) or req.oversized:
                self.close(conn)
                return
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False

    def refuse(self, conn: _Connection, status: int, message: str) -> None:
        body = ('{"error": "%s"}' % message).encode()
        _send_quietly(conn.sock, b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n%b" % (status, _REASONS[status].encode(), len(body), body))
        self.close(conn)

    def environ(self, conn: _Connection, req: _Request) -> dict[str, Any]:
        url = httptools.parse_url(req.url)
        path = url.path or b"/"
        environ: dict[str, Any] = {
            "REQUEST_METHOD": req.method.decode("latin-1"),
            "SCRIPT_NAME": "",
            "PATH_INFO": (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1"),
            "QUERY_STRING": (url.query or b"").decode("latin-1"),
            "RAW_URI": req.url.decode("latin-1"),
            "SERVER_NAME": conn.server[0],
            "SERVER_PORT": conn.server[1],
            "SERVER_PROTOCOL": "HTTP/" + req.version,
            "REMOTE_ADDR": str(conn.addr[0]) if isinstance(conn.addr, tuple) else "",
            "REMOTE_PORT": str(conn.addr[1]) if isinstance(conn.addr, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b"".join(req.body)),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in req.headers:
            if b"_" in name:
                continue  # gunicorn's default too: X_Forwarded would pose as X-Forwarded
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1").strip()
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = environ[key] + "," + text if key in environ else text
        return environ

    def respond(self, conn: _Connection, req: _Request) -> bool:
        """Run the app on `req` and send its answer; False when the connection must close."""
        environ = self.environ(conn, req)
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return chunks.append

        chunks: list[bytes] = []
        try:
            result = self.wsgi(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            status, headers = started
        except Exception:
            self.log.exception("Error handling request %s", environ.get("RAW_URI"))
            status, headers, chunks = "500 Internal Server Error", [("Content-Type", "text/plain")], [b"Internal Server Error"]
        keep = req.keep_alive and self.alive and not req.oversized
        code = int(status[:3])
        head = [b"HTTP/1.1 ", status.encode("latin-1"), b"\r\n"]
        has_length = False
        for name, value in headers:
            if "\n" in name or "\r" in name or "\n" in value or "\r" in value:
                self.log.error("refused a response header with a line break: %r", name)
                return self.refuse(conn, 500, "internal error") or False
            lower = name.lower()
            if lower == "content-length":
                has_length = True
            elif lower == "connection":
                if value.lower() == "close":
                    keep = False
                continue
            head += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        body = b"".join(chunks)
        if not has_length and code not in _NO_BODY and code >= 200 and environ["REQUEST_METHOD"] != "HEAD":
            head.append(b"Content-Length: %d\r\n" % len(body))
        head += [b"Date: ", _date().encode(), b"\r\n", b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n"]
        if environ["REQUEST_METHOD"] == "HEAD" or code in _NO_BODY:
            body = b""
        try:
            _send(conn.sock, b"".join(head) + body)
        except OSError:
            return False
        return keep


_date_cache = [0, ""]


def _date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        _send(sock, data)
    except OSError:
        pass
