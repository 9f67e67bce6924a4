"""The per-session egress proxy: the session's one way to the network (a door).

It listens on a unix socket in the session's door folder; inside the sandbox the launcher
bridges 127.0.0.1:PORT to it (HTTPS_PROXY, HTTP_PROXY, and ALL_PROXY as SOCKS5). It speaks
HTTP CONNECT, absolute-form HTTP (every request of a kept-alive connection is checked and
rewritten on its own) and SOCKS5 CONNECT. For each target it:

1. applies the policy: `allowlist` reaches only `allow_hosts`, `full` any host;
2. resolves the name once, here, outside the sandbox;
3. refuses any address the address rule refuses (`addresses.refusal`): loopback, link-local,
   the host's own addresses and the like always; a private range unless an allow_hosts
   entry that is an IP literal or CIDR opens it (a name never does: it may resolve anywhere);
4. dials that very address (no second lookup a rebinding name could change).

A request for 127.0.0.1:PORT of another of the session's doors goes to that door's socket,
so clients that do not honour NO_PROXY still reach the connector and the gateway.
Each refusal is one line in the session log.

What a session may cost the worker is capped (`Caps`): at most `connections` open at once,
each served by one thread (past the cap a connection is answered 503 and closed, one log
line per burst); heads are bounded in bytes, lines and fields and must arrive whole within
`head` seconds; idle connections are closed; bodies, chunks and tunnels move in pieces of at
most `piece` bytes. So one session holds at most `connections + 1` threads and about
`connections x (2 x head_bytes + 2 x piece)` bytes of buffers.
"""
from __future__ import annotations

import errno
import ipaddress
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

from routinely import routine_file
from workers.sandbox import addresses

DIAL_TIMEOUT = 10
HOP_BY_HOP = ("proxy-connection", "proxy-authorization", "connection", "keep-alive", "te", "trailer", "upgrade", "expect")
_NAME = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")


@dataclass(frozen=True)
class Caps:
    """What one session's proxy may cost the worker; past each the proxy refuses or closes."""

    connections: int = 64  # open at once; each is one worker thread while it is open
    idle: float = 60.0  # seconds a client may send nothing (between requests, in a body)
    head: float = 30.0  # seconds for a whole head once its first byte came
    upstream_idle: float = 600.0  # seconds an upstream (or a tunnel, both ways) may send nothing
    line: int = 16 * 1024  # a request, status, header, chunk-size or trailer line
    fields: int = 128  # header fields (or trailers) in one head
    head_bytes: int = 64 * 1024  # a whole head
    piece: int = 64 * 1024  # bytes held at once per direction while a body or tunnel moves
    burst_quiet: float = 10.0  # refusals at the cap closer than this are one burst, one log line


class Refused(Exception):
    """The request may not go on; str() says why (one line, for the client and the log)."""

    def __init__(self, why: str, status: str = "403 Forbidden") -> None:
        super().__init__(why)
        self.status = status


# -- allow_hosts

@dataclass(frozen=True)
class Entry:
    """One allow_hosts entry: a host name, a `*.domain` pattern, or an IP literal or CIDR
    (`network`); `port` None allows every port."""

    name: str
    network: addresses.Network | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> "Entry":
        """`host`, `host:port`, `*.domain`, `10.0.0.5:5432`, `10.0.0.0/8`, `[fd00::/8]:443`, `fd00::1`."""
        text = text.strip().lower()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") > 1:  # a bare IPv6 address or network
            host, port = text, ""
        else:
            host, _, port = text.partition(":")
        return cls(host.rstrip("."), _network(host), int(port) if port.isdigit() else None)

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            literal = addresses.parse_ip(host)
            return literal is not None and literal.version == self.network.version and literal in self.network
        if self.name.startswith("*."):
            return host.endswith(self.name[1:]) and host != self.name[2:]
        return host == self.name


def _network(host: str) -> addresses.Network | None:
    if "/" in host:
        try:
            return ipaddress.ip_network(host, strict=False)
        except ValueError:
            return None
    literal = addresses.parse_ip(host)
    return ipaddress.ip_network(literal) if literal is not None else None


def entry_problem(text: str) -> str | None:
    """What is wrong with an allow_hosts entry, or None (for the routine file's check)."""
    entry = Entry.parse(text) if isinstance(text, str) else None
    if entry is None or not entry.name:
        return f"{text!r} is not a host"
    tail = text.strip().rsplit("]", 1)[-1] if text.strip().startswith("[") else text
    if tail.count(":") == 1 and not (entry.port is not None and 0 < entry.port < 65536):
        return f"{text!r}: the port must be a number from 1 to 65535"
    if entry.network is None and ("/" in entry.name or not _NAME.fullmatch(entry.name)):
        return f"{text!r} is neither a host name, a *.domain pattern, an IP address nor a CIDR"
    return None


def host_allowed(host: str, port: int, allow: Iterable[str]) -> bool:
    """The policy `allowlist`: `host`, `host:port`, `*.domain`, IP literal and CIDR entries
    (matched against the target as the client wrote it); no port allows any port."""
    host = host.lower().rstrip(".").strip("[]")
    return any(Entry.parse(entry).matches(host, port) for entry in allow)


def opened(port: int, allow: Iterable[str]) -> list[addresses.Network]:
    """The networks allow_hosts opens on `port`: its IP literal and CIDR entries."""
    entries = [Entry.parse(entry) for entry in allow]
    return [e.network for e in entries if e.network is not None and e.port in (None, port)]


# -- reading and moving bytes, bounded

class Conn:
    """A socket with a bounded read buffer, so a proxy can read heads and bodies exactly."""

    def __init__(self, sock: socket.socket, caps: Caps, clock: Callable[[], float] = time.monotonic) -> None:
        self.sock, self.caps, self.clock, self.buf = sock, caps, clock, bytearray()

    def fill(self, most: int) -> bool:
        data = self.sock.recv(most)
        self.buf += data
        return bool(data)

    def head(self, wait: float) -> bytes | None:
        """The next head, up to and without its blank line; None at a clean end of stream.

        Waits `wait` seconds for its first byte (TimeoutError past it), then `caps.head` for
        the rest. Raises Refused past the caps (a line, the fields, the bytes, the time)."""
        scanned, lines, deadline = 0, 0, None
        while True:
            while (end := self.buf.find(b"\r\n", scanned)) >= 0:
                if end == scanned and lines == 0:  # an empty line before a head is ignored (RFC 9112)
                    del self.buf[:2]
                    continue
                self._check_line(end - scanned, lines, end)
                if end == scanned:
                    head = bytes(self.buf[:scanned - 2])
                    del self.buf[:end + 2]
                    self.sock.settimeout(wait)  # what follows (a body, the next head) waits as long
                    return head
                scanned, lines = end + 2, lines + 1
            self._check_line(len(self.buf) - scanned, lines, len(self.buf))
            if deadline is None and self.buf:
                deadline = self.clock() + self.caps.head
            timeout = wait if deadline is None else deadline - self.clock()
            if timeout <= 0:
                raise Refused(f"the head did not arrive whole within {self.caps.head:g} s", "408 Request Timeout")
            self.sock.settimeout(timeout)
            try:
                more = self.fill(self.caps.head_bytes + 2 - len(self.buf))
            except TimeoutError:
                if deadline is None:
                    raise
                continue
            if not more:
                if self.buf:
                    raise Refused("the connection closed in the middle of a head", "400 Bad Request")
                return None

    def _check_line(self, length: int, lines: int, so_far: int) -> None:
        """Refused once the line being read, the lines before it or the head so far are past the caps."""
        caps = self.caps
        if length > caps.line:
            raise Refused(f"a line of the head is over {caps.line // 1024} KiB", "431 Request Header Fields Too Large")
        if lines > caps.fields + 1:
            raise Refused(f"the head has over {caps.fields} fields", "431 Request Header Fields Too Large")
        if so_far > caps.head_bytes:
            raise Refused(f"the head is over {caps.head_bytes // 1024} KiB", "431 Request Header Fields Too Large")

    def line(self) -> bytes:
        """One CRLF-ended line (a chunk size or trailer), at most `caps.line` bytes."""
        scanned = 0
        while (end := self.buf.find(b"\r\n", scanned, self.caps.line + 2)) < 0:
            scanned = max(0, len(self.buf) - 1)
            if len(self.buf) > self.caps.line:
                raise ValueError("a chunk line is too long")
            if not self.fill(self.caps.line + 2 - len(self.buf)):
                raise ConnectionError("closed in the middle of a chunk line")
        out = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return out

    def some(self, most: int) -> bytes:
        """Up to `most` bytes: what is buffered, else one read. Raises ConnectionError at the end."""
        if not self.buf and not self.fill(min(most, self.caps.piece)):
            raise ConnectionError("closed early")
        out = bytes(self.buf[:most])
        del self.buf[:most]
        return out

    def stream(self, n: int, to: socket.socket) -> None:
        """Forward exactly `n` bytes, a piece at a time (never the whole in memory)."""
        while n > 0:
            piece = self.some(min(n, self.caps.piece))
            to.sendall(piece)
            n -= len(piece)

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def copy_body(self, framing: str | int | None, to: socket.socket) -> None:
        """Forward one message body: "chunked", a Content-Length, or (None) up to the end."""
        if framing == "chunked":
            self._copy_chunked(to)
        elif framing is not None:
            self.stream(framing, to)
        else:
            to.sendall(self.take())
            while data := self.sock.recv(self.caps.piece):
                to.sendall(data)

    def _copy_chunked(self, to: socket.socket) -> None:
        while True:
            size_line = self.line()
            size = size_line.split(b";")[0].strip()
            if not _HEX.fullmatch(size):
                raise ValueError("a bad chunk size")
            to.sendall(size_line + b"\r\n")
            if not int(size, 16):
                break
            self.stream(int(size, 16), to)
            if self.line() != b"":
                raise ValueError("a chunk without its line end")
            to.sendall(b"\r\n")
        for _ in range(self.caps.fields + 1):  # trailers, then the blank line
            trailer = self.line()
            to.sendall(trailer + b"\r\n")
            if not trailer:
                return
        raise ValueError("too many trailers")


def relay(a: socket.socket, b: socket.socket, idle: float, piece: int) -> None:
    """Copy both ways until both directions have ended, or nothing moved for `idle` seconds.

    One thread, non-blocking, at most `piece` bytes held per direction: while a side does not
    take what it is sent, the other side is not read (no buffer grows, neither direction
    blocks the other). Each side's end is passed on (shutdown); the caller closes both."""
    held = {a: b"", b: b""}  # read from the key, not yet written to the other side
    ended = {a: False, b: False}
    passed: set[socket.socket] = set()  # sides told that the other side ended
    other = {a: b, b: a}
    by_fd = {a.fileno(): a, b.fileno(): b}
    for s in (a, b):
        s.setblocking(False)
    poller = select.poll()
    while not all(ended[s] and not held[s] for s in (a, b)):
        want = {a: 0, b: 0}
        for src in (a, b):
            if held[src]:
                want[other[src]] |= select.POLLOUT
            elif not ended[src]:
                want[src] |= select.POLLIN
        for s, mask in want.items():
            if mask:
                poller.register(s, mask)  # again: changes the mask
            else:
                _quietly(poller.unregister, s)
        events = poller.poll(idle * 1000)
        if not events:
            return
        ready = {by_fd[fd]: event for fd, event in events}
        try:
            for src in (a, b):
                dst = other[src]
                if not held[src] and not ended[src] and ready.get(src, 0) & _READABLE:
                    data = _recv_some(src, piece)
                    if data is not None:
                        held[src], ended[src] = data, not data
                if held[src]:
                    held[src] = held[src][_send_some(dst, held[src]):]
                if ended[src] and not held[src] and dst not in passed:
                    passed.add(dst)
                    _quietly(dst.shutdown, socket.SHUT_WR)
        except OSError:
            return


_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def _recv_some(sock: socket.socket, most: int) -> bytes | None:
    """What the socket has (b"" at its end), or None when it has nothing yet."""
    try:
        return sock.recv(most)
    except BlockingIOError:
        return None


def _send_some(sock: socket.socket, data: bytes) -> int:
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


def _quietly(call: Callable, *args: object) -> None:
    try:
        call(*args)
    except (OSError, KeyError):
        pass


# -- heads

@dataclass
class Head:
    first: str
    lines: list[str]  # the field lines, as sent
    fields: dict[str, str]  # lower-case name -> value (repeated fields joined with ", ")

    @classmethod
    def parse(cls, head: bytes) -> "Head":
        # a NUL, or a CR or LF that is not part of CRLF, would be forwarded as it came: a side
        # that takes a bare CR for a line end would read a header this proxy never judged
        crlf = head.count(b"\r\n")
        if b"\0" in head or head.count(b"\r") != crlf or head.count(b"\n") != crlf:
            raise Refused("a NUL, bare CR or bare LF in the head", "400 Bad Request")
        first, *lines = head.decode("latin-1").split("\r\n")
        fields: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise Refused("a malformed header line", "400 Bad Request")
            name = name.lower()
            fields[name] = f"{fields[name]}, {value.strip()}" if name in fields else value.strip()
        return cls(first, lines, fields)

    def framing(self, request: bool) -> str | int | None:
        """"chunked", the Content-Length, or None (a request: no body; a response: to the end)."""
        coding = self.fields.get("transfer-encoding")
        if coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
                return "chunked"
            if request:
                raise Refused("a request body must be chunked or have a Content-Length", "400 Bad Request")
            return None
        length = self.fields.get("content-length")
        if length is None:
            return 0 if request else None
        lengths = {part.strip() for part in length.split(",")}
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise Refused("a bad Content-Length", "400 Bad Request")
        return int(lengths.pop())


def _status(first: str) -> int:
    parts = first.split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _connect(address: addresses.Address, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((str(address), port), timeout=timeout)


# -- the proxy

class EgressProxy:
    """Serves one session. `doors()` maps the session's in-sandbox door ports to their sockets.

    `connect` dials an address the rule allowed (tests route a private address to a server
    of theirs); `own` are the host's own addresses (read from the kernel when None)."""

    def __init__(self, network: str, allow: list[str], log: Callable[[str], None], sock: str,
                 doors: Callable[[], dict[int, str]] = dict, own: set | None = None, caps: Caps = Caps(),
                 connect: Callable[[addresses.Address, int, float], socket.socket] = _connect,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.network, self.allow, self.log, self.sock, self.doors = network, allow, log, sock, doors
        self.own = addresses.host_addresses() if own is None else own
        self.caps, self.connect, self.clock = caps, connect, clock
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._open = 0
        self._last_turned_away = float("-inf")
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(sock)
        self._listener.listen(128)
        threading.Thread(target=self._accept, name="egress-accept", daemon=True).start()

    @property
    def open_connections(self) -> int:
        return self._open

    def close(self) -> None:
        """Stop listening and end every open connection (their threads then finish)."""
        self._closed = True
        _quietly(self._listener.shutdown, socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for s in self._live:
                _quietly(s.shutdown, socket.SHUT_RDWR)

    # -- connections and their cap
    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    threading.Event().wait(0.1)  # out of descriptors: let some close before accepting more
                continue
            if not self._admit():
                self._turn_away(sock)
                continue
            self._track(sock)
            try:
                threading.Thread(target=self._serve, args=(sock,), name="egress", daemon=True).start()
            except RuntimeError:  # the host is out of threads: this connection is not served
                self._release(sock)

    def _admit(self) -> bool:
        with self._lock:
            if self._open < self.caps.connections:
                self._open += 1
                return True
            now = self.clock()
            new_burst = now - self._last_turned_away > self.caps.burst_quiet
            self._last_turned_away = now
        if new_burst:
            self._refused(f"this session has {self.caps.connections} connections open through the proxy, the most it "
                          "may; more are refused until some close")
        return False

    def _turn_away(self, sock: socket.socket) -> None:
        body = f"routinely: {self.caps.connections} connections are open through the proxy, the most a session may; close some\n"
        sock.setblocking(False)
        _quietly(sock.send, (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                             f"Connection: close\r\n\r\n{body}").encode())
        sock.close()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._handle(sock)
        finally:
            self._release(sock)

    def _release(self, sock: socket.socket) -> None:
        """Close an admitted connection and give its slot back."""
        self._untrack(sock)
        with self._lock:
            self._open -= 1

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._live.add(sock)
        if self._closed:
            _quietly(sock.shutdown, socket.SHUT_RDWR)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._live.discard(sock)
        sock.close()

    # -- the rule
    def dial(self, host: str, port: int) -> socket.socket:
        """Connect to host:port if the policy and the address rule allow it. Raises Refused."""
        host = host.lower().rstrip(".").strip("[]")
        door = self.doors().get(port) if host in ("127.0.0.1", "localhost", "::1") else None
        if door is not None:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(door)
            return upstream
        if self.network != routine_file.Network.FULL and not host_allowed(host, port, self.allow):
            raise Refused(f"{host}:{port} is not in this routine's allow_hosts")
        refusals, failures, never = [], [], True
        for address in self._resolve(host, port):
            why = addresses.refusal(address, self.own, opened(port, self.allow))
            if why is not None:
                refusals.append(f"{addresses.show(address)} is {why}")
                never = never and addresses.never_opened(why)
                continue
            try:
                upstream = self.connect(address, port, DIAL_TIMEOUT)
            except OSError as exc:
                failures.append(f"{addresses.show(address)}: {exc.strerror or exc}")
                continue
            if upstream.family != socket.AF_UNIX:
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # heads and bodies go as they come
            return upstream
        if refusals and not failures:
            hint = "no allow_hosts entry opens it" if never else \
                "only an allow_hosts entry that is its IP address or a CIDR around it opens a private address"
            raise Refused(f"{host}:{port}: {'; '.join(refusals)} ({hint})")
        raise ConnectionError(f"cannot reach {host}:{port}: {'; '.join(refusals + failures) or 'no address'}")

    def _resolve(self, host: str, port: int) -> list[addresses.Address]:
        literal = addresses.parse_ip(host)
        if literal is not None:
            return [literal]
        try:
            found = [addresses.parse_ip(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        except (socket.gaierror, UnicodeError):
            raise Refused(f"{host} does not resolve") from None
        return list(dict.fromkeys(a for a in found if a is not None))

    def _refused(self, why: str) -> None:
        self.log(f"routinely: egress refused: {why}")

    def _open_upstream(self, client: socket.socket, host: str, port: int) -> socket.socket | None:
        """dial(), answering the client (403, 502) and logging when it cannot."""
        try:
            upstream = self.dial(host, port)
        except Refused as exc:
            self._refused(str(exc))
            self._answer(client, "403 Forbidden", str(exc))
            return None
        except (ConnectionError, OSError) as exc:
            self._answer(client, "502 Bad Gateway", str(exc))
            return None
        self._track(upstream)
        upstream.settimeout(self.caps.upstream_idle)
        return upstream

    # -- the protocols
    def _handle(self, sock: socket.socket) -> None:
        client = Conn(sock, self.caps, self.clock)
        try:
            sock.settimeout(self.caps.idle)
            if not client.fill(self.caps.piece):
                return
            if client.buf[:1] == b"\x05":
                return self._socks(client)
            self._http(client)
        except (OSError, ValueError, ConnectionError, Refused):
            pass

    def _http(self, client: Conn) -> None:
        upstream: socket.socket | None = None
        upstream_for: tuple[str, int] | None = None
        try:
            while True:
                try:
                    raw = client.head(self.caps.idle)
                    if raw is None:
                        return
                    head = Head.parse(raw)
                    parts = head.first.split(" ")
                    if len(parts) != 3:
                        raise Refused("not an HTTP proxy request", "400 Bad Request")
                    method, target, version = parts
                    framing = head.framing(request=True)
                except Refused as exc:
                    return self._answer(client.sock, exc.status, str(exc))
                if method.upper() == "CONNECT":
                    host, _, port_text = target.rpartition(":")
                    return self._connect_tunnel(client, host, int(port_text) if port_text.isdigit() else 443)
                url = urlsplit(target)
                if url.scheme != "http" or not url.hostname:
                    return self._answer(client.sock, "400 Bad Request", "send HTTPS through CONNECT and HTTP as absolute URLs")
                where = (url.hostname, url.port or 80)
                if where != upstream_for:
                    if upstream is not None:
                        self._untrack(upstream)
                    upstream, upstream_for = self._open_upstream(client.sock, *where), where
                    if upstream is None:
                        return
                if "100-continue" in head.fields.get("expect", "").lower():
                    client.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                close = "close" in head.fields.get("connection", head.fields.get("proxy-connection", "")).lower() \
                    or version == "HTTP/1.0" and "keep-alive" not in head.fields.get("proxy-connection", "").lower()
                upstream.sendall(self._rewrite(method, url, version, head, framing, close))
                client.copy_body(framing, upstream)
                if not self._response(Conn(upstream, self.caps, self.clock), client, method) or close:
                    return
        finally:
            if upstream is not None:
                self._untrack(upstream)

    @staticmethod
    def _rewrite(method: str, url, version: str, head: Head, framing: str | int | None, close: bool) -> bytes:
        """The request as the upstream gets it: origin-form, no hop-by-hop fields, and no
        Content-Length beside chunked (two framings is how requests are smuggled)."""
        drop = HOP_BY_HOP + (("content-length",) if framing == "chunked" else ())
        kept = [line for line in head.lines if line.split(":", 1)[0].strip().lower() not in drop]
        kept.append("Connection: close" if close else "Connection: keep-alive")
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return f"{method} {path} {version}\r\n".encode() + "\r\n".join(kept).encode("latin-1") + b"\r\n\r\n"

    def _response(self, upstream: Conn, client: Conn, method: str) -> bool:
        """Relay one response; False when the connection cannot carry another."""
        try:
            while True:
                raw = upstream.head(self.caps.upstream_idle)
                if raw is None:
                    return False
                head = Head.parse(raw)
                status = _status(head.first)
                if not 100 <= status < 200 or status == 101:
                    framing = head.framing(request=False)
                    break
                client.sock.sendall(raw + b"\r\n\r\n")
        except TimeoutError:
            self._answer(client.sock, "504 Gateway Timeout", f"the upstream sent nothing for {self.caps.upstream_idle:g} s")
            return False
        except Refused as exc:
            self._answer(client.sock, "502 Bad Gateway", f"the upstream's answer: {exc}")
            return False
        client.sock.sendall(raw + b"\r\n\r\n")
        if status == 101:  # switched protocols: a tunnel from here on
            self._tunnel(client, upstream)
            return False
        if method.upper() == "HEAD" or status in (204, 304):
            pass
        elif framing is None:
            upstream.copy_body(None, client.sock)
            return False
        else:
            upstream.copy_body(framing, client.sock)
        if upstream.buf:
            return False  # the server said more than one response: do not guess
        return "close" not in head.fields.get("connection", "").lower()

    def _connect_tunnel(self, client: Conn, host: str, port: int) -> None:
        tunnel = self._open_upstream(client.sock, host, port)
        if tunnel is None:
            return
        try:
            client.sock.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            self._tunnel(client, Conn(tunnel, self.caps, self.clock))
        finally:
            self._untrack(tunnel)

    def _tunnel(self, a: Conn, b: Conn) -> None:
        """Relay two connections both ways, first handing over what each had read ahead."""
        b.sock.sendall(a.take())
        a.sock.sendall(b.take())
        relay(a.sock, b.sock, self.caps.upstream_idle, self.caps.piece)

    def _answer(self, client: socket.socket, status: str, why: str) -> None:
        body = f"routinely: {why}\n".encode()
        client.sendall(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                       "Connection: close\r\n\r\n".encode() + body)

    def _socks(self, client: Conn) -> None:
        """SOCKS5, no authentication, CONNECT only (RFC 1928)."""
        _, count = _exactly(client, 2)
        methods = _exactly(client, count)
        if 0 not in methods:
            client.sock.sendall(b"\x05\xff")
            return
        client.sock.sendall(b"\x05\x00")
        _, command, _, kind = _exactly(client, 4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(_exactly(client, 4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(_exactly(client, 16)))
        elif kind == 3:
            host = _exactly(client, _exactly(client, 1)[0]).decode("idna")
        else:
            client.sock.sendall(b"\x05\x08\x00\x01" + bytes(6))
            return
        port = struct.unpack("!H", _exactly(client, 2))[0]
        if command != 1:
            client.sock.sendall(b"\x05\x07\x00\x01" + bytes(6))
            return
        try:
            upstream = self.dial(host, port)
        except Refused as exc:
            self._refused(str(exc))
            client.sock.sendall(b"\x05\x02\x00\x01" + bytes(6))
            return
        except (ConnectionError, OSError):
            client.sock.sendall(b"\x05\x04\x00\x01" + bytes(6))
            return
        self._track(upstream)
        try:
            client.sock.sendall(b"\x05\x00\x00\x01" + bytes(6))
            self._tunnel(client, Conn(upstream, self.caps, self.clock))
        finally:
            self._untrack(upstream)


def _exactly(conn: Conn, n: int) -> bytes:
    """n bytes (n < 256 + 4: SOCKS fields), waiting for them."""
    while len(conn.buf) < n:
        if not conn.fill(n - len(conn.buf)):
            raise ConnectionError("closed early")
    out = bytes(conn.buf[:n])
    del conn.buf[:n]
    return out
