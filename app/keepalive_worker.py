"""A gunicorn worker that keeps connections alive: one thread, one event loop, WSGI inline.

gunicorn's sync worker closes every connection after one request ("until someone shows a
buffering proxy that supports Keep-Alive"), so each delivery paid for a TCP handshake, an
accept and a close, and gunicorn's pure-Python request parser on top — the largest single
cost of a delivery (README, Speed). This worker serves many connections per process with
`selectors`, parses HTTP/1.1 with httptools (llhttp, the C parser Node.js uses, strict: it
refuses Content-Length with Transfer-Encoding, duplicate lengths, bare LF), and runs the
WSGI app synchronously as soon as a request is whole: no threads, the same
one-request-at-a-time model as `sync`, so nothing in the app changes.

What it does like gunicorn: 100-continue, chunked request bodies, HTTP/1.0 and
`Connection: close`, header names with `_` dropped (they would alias `-` in the environ),
`max_requests`, the arbiter's heartbeat, graceful stop on SIGTERM (a request being handled
finishes; idle connections close). What it adds: a body is read whole before the app runs,
capped at MAX_BODY (a larger announced Content-Length is answered at once, from the
headers alone); a request whose client stops mid-body reaches the app with what arrived
and `wsgi.input_terminated` false, so the app sees it short (a chunked one is answered 400
here); answers a client does not read are buffered, and its connection is not read from
until they are sent, so no client can stall the loop; heads are capped at MAX_HEAD and
must arrive within STALLED_SECONDS; trailers never reach the environ. Responses are
buffered and given a Content-Length. No TLS: terminate it in front (a reverse proxy).
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

from app.responses import HEADERS, policy
from app.webhooks import MAX_BODY  # the largest body any route takes; past it the app answers 413

MAX_HEAD = 64 * 1024  # request line and headers together
STALLED_SECONDS = 30.0  # a head that takes longer, or a body that sends nothing for this long, is dropped
PER_WAKE = 16  # requests of one connection answered before the loop turns to the others
RECV = 256 * 1024

# what the app's SecurityHeaders adds to its answers, on the answers this worker makes itself
_OWN_HEADER_PAIRS = [(name.encode(), value.encode()) for name, value in (*HEADERS, ("Content-Security-Policy", policy(None)))]
_OWN_HEADERS = b"".join(b"%b: %b\r\n" % pair for pair in _OWN_HEADER_PAIRS)
_REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}
_NO_BODY = {204, 304}
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Request:
    __slots__ = ("method", "url", "headers", "body", "size", "version", "keep_alive", "head_done", "complete",
                 "oversized", "chunked", "expect", "short")

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
        self.chunked = False
        self.expect = False  # Expect: 100-continue, not yet answered
        self.short = False  # the client stopped sending mid-body


class _Connection:
    """One client socket: bytes in, parsed requests out (httptools calls the on_* methods)."""

    def __init__(self, sock: socket.socket, addr: Any, server: tuple[str, str]) -> None:
        self.sock, self.addr, self.server = sock, addr, server
        self.fd = sock.fileno()
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.current: _Request | None = None
        self.ready: list[_Request] = []
        self.out = b""  # answers the client has not read yet
        self.closing = False  # close once `out` is sent
        self.head_bytes = 0
        self.last = self.began = time.monotonic()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Request()
        self.began = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.current.head_done:  # after the body they are trailers: never in the environ
            self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.current
        req.method = self.parser.get_method()
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        req.head_done = True
        self.head_bytes = 0
        if len(req.url) + sum(len(n) + len(v) for n, v in req.headers) > MAX_HEAD:
            raise _HeadTooLarge()
        for name, value in req.headers:
            lower = name.lower()
            if lower == b"content-length" and value.strip().isdigit() and int(value) > MAX_BODY:
                req.oversized = True
            elif lower == b"transfer-encoding":
                req.chunked = True
            elif lower == b"expect" and value.strip().lower() == b"100-continue" and req.version == "1.1":
                req.expect = True
        if req.oversized:  # answered from the headers alone; the body is never read
            req.complete = True
            self.ready.append(req)

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
        self.backlog: set[_Connection] = set()  # connections with requests left after PER_WAKE
        self.server: dict[int, tuple[str, str]] = {}
        for listener in self.sockets:
            listener.setblocking(False)
            name = listener.getsockname()
            self.server[listener.fileno()] = (str(name[0]), str(name[1])) if isinstance(name, tuple) else (str(name), "")
        self.listening = False
        self.out_of_fds = 0.0
        self.listen(True)
        self.selector.register(self.PIPE[0], _READ, None)
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
            for key, mask in self.selector.select(0 if self.backlog else 0.5):
                data = key.data
                if data is None:
                    try:
                        os.read(self.PIPE[0], 1)
                    except BlockingIOError:
                        pass
                elif isinstance(data, _Connection):
                    self.guarded(data, self.writable if mask & _WRITE else self.readable)
                else:
                    self.accept(data)
                if not self.alive:
                    break
            for conn in list(self.backlog):
                self.backlog.discard(conn)
                self.guarded(conn, self.serve)
            self.listen(len(self.connections) < limit and now >= self.out_of_fds)
        for conn in list(self.connections.values()):
            self.close(conn)

    def guarded(self, conn: _Connection, step: Callable[[_Connection], None]) -> None:
        """One connection's step; whatever goes wrong ends that connection, never the loop."""
        try:
            step(conn)
        except Exception:
            self.log.exception("dropped a connection after an unexpected error")
            self.close(conn)

    def listen(self, on: bool) -> None:
        if on != self.listening:
            self.listening = on
            for listener in self.sockets:
                if on:
                    self.selector.register(listener, _READ, listener)
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
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # out of descriptors: stop listening a while
                self.log.error("out of file descriptors: not accepting for a second")
                self.out_of_fds = time.monotonic() + 1.0
                self.listen(False)
                return
            if exc.errno == errno.ECONNABORTED:
                return
            raise
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock, addr, self.server[listener.fileno()])
        self.connections[conn.fd] = conn
        self.selector.register(sock, _READ, conn)

    def sweep(self, now: float) -> None:
        """Close connections idle past gunicorn's `keepalive` seconds between requests, a head
        not whole STALLED_SECONDS after it began, a body silent that long, or answers unread that long."""
        idle = self.cfg.keepalive
        for conn in list(self.connections.values()):
            req = conn.current
            if now - conn.last > STALLED_SECONDS or (req is None and not conn.out and now - conn.last > idle) \
                    or (req is not None and not req.head_done and now - conn.began > STALLED_SECONDS):
                self.close(conn)

    def close(self, conn: _Connection) -> None:
        if self.connections.get(conn.fd) is conn:
            del self.connections[conn.fd]
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        self.backlog.discard(conn)
        try:
            conn.sock.close()
        except OSError:
            pass
        conn.parser = conn.current = None  # the parser and the connection refer to each other: let go
        conn.ready = []

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
                req.complete, req.keep_alive, req.short = True, False, True
                conn.ready.append(req)
            conn.closing = True
            self.serve(conn)
            return
        if conn.current is None or not conn.current.head_done:
            conn.head_bytes += len(data)  # llhttp keeps a long URL or header value to itself until it ends
            if conn.head_bytes > MAX_HEAD + RECV:
                self.refuse(conn, 431, "the request's head is too large")
                return
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            conn.closing = True  # no protocol switch here: what was asked is answered as plain HTTP
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadTooLarge):
                raise
            self.serve(conn)
            self.refuse(conn, 431, "the request's head is too large")
            return
        except httptools.HttpParserError:
            self.serve(conn)  # the requests before the bad one are still answered
            self.refuse(conn, 400, "the request is not valid HTTP/1.1")
            return
        if conn.current is not None and not conn.current.head_done and conn.head_bytes > MAX_HEAD:
            self.refuse(conn, 431, "the request's head is too large")
            return
        self.serve(conn)

    def serve(self, conn: _Connection) -> None:
        """Answer up to PER_WAKE of the connection's whole requests, in order."""
        for _ in range(PER_WAKE):
            if not conn.ready or conn.out or conn.parser is None:
                break
            req = conn.ready.pop(0)
            self.nr += 1
            keep = self.respond(conn, req)
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not keep or req.oversized:
                conn.ready, conn.closing = [], True
        if conn.parser is None:
            return
        if conn.ready and not conn.out:
            self.backlog.add(conn)
        req = conn.current
        if req is not None and req.expect and not conn.ready and not conn.out:
            req.expect = False  # 100 Continue after every earlier answer, never ahead of one
            self.write(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if conn.closing and not conn.out and not conn.ready:
            self.close(conn)

    def write(self, conn: _Connection, data: bytes) -> None:
        """Send what the socket takes now; keep the rest, and stop reading until it is sent."""
        if not conn.out:
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                conn.ready, conn.closing = [], True
                return
            data = data[sent:]
            if not data:
                return
            self.selector.modify(conn.sock, _WRITE, conn)
        conn.out += data

    def writable(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        conn.out = conn.out[sent:]
        conn.last = time.monotonic()
        if not conn.out:
            self.selector.modify(conn.sock, _READ, conn)
            self.serve(conn)

    def refuse(self, conn: _Connection, status: int, message: str) -> None:
        body = ('{"error": "%s"}' % message).encode()
        conn.ready, conn.closing = [], True
        self.write(conn, b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b"
                   b"Connection: close\r\n\r\n%b" % (status, _REASONS[status].encode(), len(body), _OWN_HEADERS, body))
        if not conn.out:
            self.close(conn)

    def environ(self, conn: _Connection, req: _Request) -> dict[str, Any]:
        """PEP 3333's environ; raises httptools.HttpParserInvalidURLError for a target it cannot split."""
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
            "wsgi.input_terminated": not req.short,  # short: the app reads CONTENT_LENGTH and sees it cut
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
        """Run the app on `req` and queue its answer; False when the connection must close."""
        if req.short and req.chunked:
            self.refuse(conn, 400, "the chunked body ended before its last chunk")
            return False
        try:
            environ = self.environ(conn, req)
        except httptools.HttpParserInvalidURLError:
            self.refuse(conn, 400, "the request target is not a valid URL")
            return False
        head_only = environ["REQUEST_METHOD"] == "HEAD"
        try:
            status, headers, body = self.call(environ)
        except Exception:
            self.log.exception("Error handling request %s", environ.get("RAW_URI"))
            status, headers, body = b"500 Internal Server Error", [(b"Content-Type", b"text/plain"), *_OWN_HEADER_PAIRS], b"Internal Server Error"
        code = int(status[:3])
        keep = req.keep_alive and self.alive and not req.oversized and not conn.closing
        head = [b"HTTP/1.1 ", status, b"\r\n"]
        has_length = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                has_length = True
            elif lower == b"connection":
                if value.lower() == b"close":
                    keep = False
                continue
            head += [name, b": ", value, b"\r\n"]
        if not has_length and code not in _NO_BODY and code >= 200 and not head_only:
            head.append(b"Content-Length: %d\r\n" % len(body))
        head += [b"Date: ", _date(), b"\r\n", b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n"]
        self.write(conn, b"".join(head) + (b"" if head_only or code in _NO_BODY else body))
        return keep

    def call(self, environ: dict[str, Any]) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        """The app's status line, headers and body, checked and encoded (a bad one raises)."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            started[:] = [status, headers]  # nothing is sent before the app returns: a later call replaces
            return chunks.append

        result = self.wsgi(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        if not started:
            raise RuntimeError("the app returned without calling start_response")
        status, headers = started
        line = status.encode("latin-1")
        if len(line) < 3 or not line[:3].isdigit() or b"\r" in line or b"\n" in line:
            raise ValueError(f"the app gave a bad status line: {status!r}")
        encoded = []
        for name, value in headers:
            n, v = name.encode("latin-1"), value.encode("latin-1")
            if b"\r" in n or b"\n" in n or b"\r" in v or b"\n" in v or b":" in n:
                raise ValueError(f"the app gave a header with a line break: {name!r}")
            encoded.append((n, v))
        return line, encoded, b"".join(chunks)


_date_cache: list[Any] = [0, b""]


def _date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True).encode()]
    return _date_cache[1]
