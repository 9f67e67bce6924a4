"""The hot path's Redis connection: RESP bytes built here, replies parsed by hiredis.

One start per delivery is one round trip, and redis-py's client (pool checkout, command
packing, hooks, the Pipeline object) cost ~100 µs of Python around it. `Wire` keeps one
socket per thread, writes a whole transaction in one send and reads its replies with
hiredis's C parser. Everything else in Routinely uses redis-py (`routinely.storage.store.connect`).

Failures are redis-py's exceptions, so callers handle one family: an unreachable or cut
Redis raises redis.ConnectionError / redis.TimeoutError (and the socket is dropped, so a
half-read reply never lines up with the next command; the next call reconnects); an error
reply raises redis.ResponseError (NoScriptError for NOSCRIPT).
"""
from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from typing import Any, Sequence

import hiredis
import redis
from redis.connection import parse_url
from redis.exceptions import NoScriptError

CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0
IDLE_CHECK_SECONDS = 1.0  # a socket idle this long is checked for a server-side close first


class Segment:
    """Arguments packed once and spliced into many commands (e.g. a job template's fields)."""

    __slots__ = ("count", "data")

    def __init__(self, args: Sequence[Any]) -> None:
        if any(type(v) is Segment for v in args):
            raise TypeError("a Segment holds plain arguments, not another Segment")
        self.count = len(args)
        self.data = pack(*args)[len(b"*%d\r\n" % len(args)):]


def pack(*args: Any) -> bytes:
    """One command as RESP: *N, then $len and the bytes of each argument (a Segment
    stands for the arguments it packed)."""
    parts = [b"$%d\r\n%b\r\n" % (len(b), b) if type(b) is bytes else b.data if type(b) is Segment else _refuse(b)
             for b in [v.encode() if type(v) is str else b"%d" % v if type(v) is int else v for v in args]]
    count = len(args) + sum([v.count - 1 for v in args if type(v) is Segment])
    return b"*%d\r\n" % count + b"".join(parts)


def _refuse(value: Any) -> bytes:
    raise TypeError(f"a Redis argument is bytes, str or int, not {type(value).__name__}")


def reply_error(err: hiredis.ReplyError) -> redis.ResponseError:
    text = str(err)
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    return redis.ResponseError(text)


class _Held:
    __slots__ = ("sock", "reader", "pid", "used")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.reader, self.pid, self.used = sock, hiredis.Reader(), os.getpid(), time.monotonic()


class Wire:
    """A socket per thread to the Redis of `url` (redis://, rediss://, unix://)."""

    def __init__(self, url: str) -> None:
        opts = parse_url(url)
        self._path = opts.get("path")
        self._host, self._port = opts.get("host", "localhost"), int(opts.get("port", 6379))
        self._tls = url.startswith("rediss://")
        self._hello: list[bytes] = []  # AUTH and SELECT, sent once per connection
        if opts.get("password"):
            self._hello.append(pack("AUTH", *([opts["username"]] if opts.get("username") else []), opts["password"]))
        if int(opts.get("db") or 0):
            self._hello.append(pack("SELECT", int(opts["db"])))
        self._local = threading.local()

    def _open(self) -> _Held:
        try:
            if self._path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(self._path)
            else:
                sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls:
                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(READ_TIMEOUT)
        except OSError as exc:
            raise redis.ConnectionError(f"cannot connect to Redis: {exc.strerror or exc}") from None
        held = _Held(sock)
        if self._hello:
            for got in self._exchange(held, b"".join(self._hello), len(self._hello)):
                if isinstance(got, redis.ResponseError):
                    self._drop(held)
                    raise got
        return held

    def _held(self) -> _Held:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.pid != os.getpid():
            held = None  # a forked child opens its own
        if held is not None and time.monotonic() - held.used > IDLE_CHECK_SECONDS:
            # readable while idle = the server closed it (restart, timeout): reconnect now
            poller = select.poll()  # (select() cannot watch descriptors past 1024)
            poller.register(held.sock, select.POLLIN)
            if poller.poll(0):
                self._drop(held)
                held = None
        if held is None:
            held = self._local.held = self._open()
        return held

    def _drop(self, held: _Held) -> None:
        try:
            held.sock.close()
        except OSError:
            pass
        if getattr(self._local, "held", None) is held:
            self._local.held = None

    def _exchange(self, held: _Held, data: bytes, replies: int) -> list[Any]:
        """Send `data`, read `replies` replies; an error reply comes back as ResponseError."""
        out: list[Any] = []
        try:
            held.sock.sendall(data)
            reader = held.reader
            while len(out) < replies:
                got = reader.gets()
                if got is False:
                    chunk = held.sock.recv(65536)
                    if not chunk:
                        raise redis.ConnectionError("Redis closed the connection")
                    reader.feed(chunk)
                    continue
                out.append(reply_error(got) if isinstance(got, hiredis.ReplyError) else got)
        except socket.timeout:
            self._drop(held)
            raise redis.TimeoutError("Redis did not answer in time") from None
        except OSError as exc:
            self._drop(held)
            raise redis.ConnectionError(f"lost the connection to Redis: {exc.strerror or exc}") from None
        except (redis.ConnectionError, hiredis.ProtocolError) as exc:
            self._drop(held)
            raise redis.ConnectionError(str(exc)) from None
        held.used = time.monotonic()
        return out

    def call(self, *args: Any) -> Any:
        """One command; its reply. Raises redis.ResponseError for an error reply."""
        got = self._exchange(self._held(), pack(*args), 1)[0]
        if isinstance(got, redis.ResponseError):
            raise got
        return got

    def call_packed(self, command: bytes) -> Any:
        """One command already packed with `pack`; its reply."""
        got = self._exchange(self._held(), command, 1)[0]
        if isinstance(got, redis.ResponseError):
            raise got
        return got

    def transaction(self, commands: Sequence[bytes]) -> list[Any]:
        """MULTI, the packed commands and EXEC in one send; EXEC's replies, in which a
        command's runtime error is a ResponseError object (the others still ran)."""
        data = b"".join((b"*1\r\n$5\r\nMULTI\r\n", *commands, b"*1\r\n$4\r\nEXEC\r\n"))
        got = self._exchange(self._held(), data, len(commands) + 2)
        for reply in got[:-1]:
            if isinstance(reply, redis.ResponseError):
                raise reply  # a queueing error: EXEC aborted, nothing ran
        if isinstance(got[-1], redis.ResponseError):
            raise got[-1]
        if got[-1] is None:
            raise redis.ResponseError("the transaction was aborted")
        return [reply_error(r) if isinstance(r, hiredis.ReplyError) else r for r in got[-1]]
