"""The per-session egress proxy: the session's one way to the network (a door).

It listens on a unix socket in the session's door folder; inside the sandbox the launcher
bridges 127.0.0.1:PORT to it (HTTPS_PROXY, HTTP_PROXY, and ALL_PROXY as SOCKS5). It speaks
HTTP CONNECT, absolute-form HTTP (every request of a kept-alive connection is checked and
rewritten on its own) and SOCKS5 CONNECT. For each target it:

1. applies the policy: `allowlist` reaches only `allow_hosts`, `full` any host;
2. resolves the name once, here, outside the sandbox;
3. refuses any address the address rule refuses (loopback, private, metadata, ...), unless
   an allow_hosts entry names that host exactly (not through a `*.` pattern);
4. dials that very address (no second lookup a rebinding name could change).

A request for 127.0.0.1:PORT of another of the session's doors goes to that door's socket,
so clients that do not honour NO_PROXY still reach the connector and the gateway.
Each refusal is one line in the session log.
"""
from __future__ import annotations

import ipaddress
import socket
import socketserver
import struct
import threading
from typing import Callable, Iterable
from urllib.parse import urlsplit

from workers.sandbox import addresses
from workers.sandbox.launch import pump

MAX_HEAD = 16 * 1024
DIAL_TIMEOUT = 10
HOP_BY_HOP = ("proxy-connection", "proxy-authorization", "connection", "keep-alive", "te", "trailer", "upgrade", "expect")


class Refused(Exception):
    """The target may not be dialled; str() says why (one line, for the client and the log)."""


def _entry(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower()
    if entry.startswith("["):  # [::1]:8080
        name, _, rest = entry[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") > 1:  # a bare IPv6 address
        return entry, None
    name, _, port = entry.partition(":")
    return name, int(port) if port.isdigit() else None


def _same_host(host: str, name: str) -> bool:
    if host == name:
        return True
    a, b = addresses.parse_ip(host), addresses.parse_ip(name)
    return a is not None and a == b


def host_allowed(host: str, port: int, allow: Iterable[str]) -> bool:
    """`host`, `host:port` and `*.domain` entries; an entry without a port allows any port."""
    host = host.lower().rstrip(".").strip("[]")
    for entry in allow:
        name, want_port = _entry(entry)
        if want_port is not None and want_port != port:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and host != name[2:]:
                return True
        elif _same_host(host, name):
            return True
    return False


def named_explicitly(host: str, port: int, allow: Iterable[str]) -> bool:
    """An allow_hosts entry names this host (or address) itself: it may then be private."""
    return host_allowed(host, port, [e for e in allow if not e.strip().startswith("*.")])


class Conn:
    """A socket with a read buffer, so a proxy can read heads and bodies exactly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def head(self) -> bytes | None:
        """Up to and without the blank line; None at a clean end of stream."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise Refused("request head too large")
            if not self._fill():
                if self.buf:
                    raise Refused("the connection closed in the middle of a request head")
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed early")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD or not self._fill():
                raise ConnectionError("bad chunk line")
        out, _, self.buf = self.buf.partition(b"\r\n")
        return out

    def take(self) -> bytes:
        out, self.buf = self.buf, b""
        return out

    def copy_body(self, headers: dict[str, str], to: socket.socket, until_close: bool = False) -> None:
        """Forward one message body framed by `headers` (chunked, Content-Length, or to the end)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = self.line()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                to.sendall(size_line + b"\r\n")
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = self.line()
                        to.sendall(trailer + b"\r\n")
                        if not trailer:
                            return
                to.sendall(self.exactly(size + 2))
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                chunk = self.exactly(min(remaining, 65536))
                to.sendall(chunk)
                remaining -= len(chunk)
        elif until_close:
            to.sendall(self.take())
            while data := self.sock.recv(65536):
                to.sendall(data)


def _parse_head(head: bytes) -> tuple[str, list[str], dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], lines[1:], headers


class EgressProxy:
    """Serves one session. `doors()` maps the session's in-sandbox door ports to their sockets."""

    def __init__(self, network: str, allow: list[str], log: Callable[[str], None], sock: str,
                 doors: Callable[[], dict[int, str]] = dict, own: set | None = None) -> None:
        self.network, self.allow, self.log, self.sock, self.doors = network, allow, log, sock, doors
        self.own = addresses.host_addresses() if own is None else own
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingUnixStreamServer(self.sock, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the rule
    def dial(self, host: str, port: int) -> socket.socket:
        """Connect to host:port if the policy and the address rule allow it. Raises Refused."""
        host = host.lower().rstrip(".").strip("[]")
        door = self.doors().get(port) if host in ("127.0.0.1", "localhost", "::1") else None
        if door is not None:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(door)
            return upstream
        if self.network != "full" and not host_allowed(host, port, self.allow):
            raise Refused(f"{host}:{port} is not in this routine's allow_hosts")
        explicit = named_explicitly(host, port, self.allow)
        literal = addresses.parse_ip(host)
        if literal is not None:
            found = [literal]
        else:
            try:
                found = [addresses.parse_ip(info[4][0]) for info in
                         socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
            except socket.gaierror:
                raise Refused(f"{host} does not resolve") from None
        reasons = []
        for address in dict.fromkeys(a for a in found if a is not None):
            why = None if explicit else addresses.refusal(address, self.own)
            if why is not None:
                reasons.append(f"{addresses.show(address)} is {why}")
                continue
            try:
                upstream = socket.create_connection((str(address), port), timeout=DIAL_TIMEOUT)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # heads and bodies go as they come
                return upstream
            except OSError as exc:
                reasons.append(f"{addresses.show(address)}: {exc.strerror or exc}")
        if reasons and all(" is " in r for r in reasons):
            raise Refused(f"{host}:{port}: {'; '.join(reasons)} (only an allow_hosts entry naming it opens it)")
        raise ConnectionError(f"cannot reach {host}:{port}: {'; '.join(reasons) or 'no address'}")

    def _refused(self, why: str) -> None:
        self.log(f"routinely: egress refused: {why}")

    # -- the protocols
    def _handle(self, sock: socket.socket) -> None:
        client = Conn(sock)
        try:
            if not client._fill():
                return
            if client.buf[:1] == b"\x05":
                return self._socks(client)
            self._http(client)
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            sock.close()

    def _http(self, client: Conn) -> None:
        upstream: socket.socket | None = None
        upstream_for: tuple[str, int] | None = None
        try:
            while True:
                try:
                    head = client.head()
                except Refused as exc:
                    return self._answer(client.sock, "431 Request Header Fields Too Large", str(exc))
                if head is None:
                    return
                first, lines, headers = _parse_head(head)
                try:
                    method, target, version = first.split(" ")
                except ValueError:
                    return self._answer(client.sock, "400 Bad Request", "not an HTTP proxy request")
                if method.upper() == "CONNECT":
                    host, _, port_text = target.rpartition(":")
                    port = int(port_text) if port_text.isdigit() else 443
                    tunnel = self._open(client.sock, host, port)
                    if tunnel is None:
                        return
                    client.sock.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    if client.buf:
                        tunnel.sendall(client.take())
                    return pump(client.sock, tunnel)
                url = urlsplit(target)
                if url.scheme != "http" or not url.hostname:
                    return self._answer(client.sock, "400 Bad Request", "send HTTPS through CONNECT and HTTP as absolute URLs")
                where = (url.hostname, url.port or 80)
                if where != upstream_for:
                    if upstream is not None:
                        upstream.close()
                    upstream, upstream_for = self._open(client.sock, *where), where
                    if upstream is None:
                        return
                if "100-continue" in headers.get("expect", "").lower():
                    client.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                kept = [l for l in lines if l.split(":", 1)[0].strip().lower() not in HOP_BY_HOP]
                close = "close" in headers.get("connection", headers.get("proxy-connection", "")).lower() \
                    or version == "HTTP/1.0" and "keep-alive" not in headers.get("proxy-connection", "").lower()
                kept.append("Connection: close" if close else "Connection: keep-alive")
                upstream.sendall(f"{method} {path} {version}\r\n".encode() + "\r\n".join(kept).encode("latin-1") + b"\r\n\r\n")
                client.copy_body(headers, upstream)
                if not self._response(Conn(upstream), client.sock, method) or close:
                    return
        finally:
            if upstream is not None:
                upstream.close()

    def _response(self, upstream: Conn, client: socket.socket, method: str) -> bool:
        """Relay one response; False when the connection cannot carry another."""
        while True:
            head = upstream.head()
            if head is None:
                return False
            first, _, headers = _parse_head(head)
            client.sendall(head + b"\r\n\r\n")
            status = int(first.split(" ")[1]) if len(first.split(" ")) > 1 and first.split(" ")[1].isdigit() else 0
            if 100 <= status < 200 and status != 101:
                continue
            break
        framed = "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers
        if method.upper() == "HEAD" or status in (204, 304):
            pass
        elif status == 101 or not framed:
            upstream.copy_body({}, client, until_close=True)
            return False
        else:
            upstream.copy_body(headers, client)
        if upstream.buf:
            return False  # the server said more than one response: do not guess
        return "close" not in headers.get("connection", "").lower()

    def _open(self, client: socket.socket, host: str, port: int) -> socket.socket | None:
        try:
            upstream = self.dial(host, port)
        except Refused as exc:
            self._refused(str(exc))
            self._answer(client, "403 Forbidden", str(exc))
            return None
        except (ConnectionError, OSError) as exc:
            self._answer(client, "502 Bad Gateway", str(exc))
            return None
        upstream.settimeout(None)
        return upstream

    def _answer(self, client: socket.socket, status: str, why: str) -> None:
        body = f"routinely: {why}\n".encode()
        client.sendall(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                       "Connection: close\r\n\r\n".encode() + body)

    def _socks(self, client: Conn) -> None:
        """SOCKS5, no authentication, CONNECT only (RFC 1928)."""
        _, count = client.exactly(2)
        methods = client.exactly(count)
        if 0 not in methods:
            client.sock.sendall(b"\x05\xff")
            return
        client.sock.sendall(b"\x05\x00")
        _, command, _, kind = client.exactly(4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(client.exactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(client.exactly(16)))
        elif kind == 3:
            host = client.exactly(client.exactly(1)[0]).decode("idna")
        else:
            client.sock.sendall(b"\x05\x08\x00\x01" + bytes(6))
            return
        port = struct.unpack("!H", client.exactly(2))[0]
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
        upstream.settimeout(None)
        client.sock.sendall(b"\x05\x00\x00\x01" + bytes(6))
        if client.buf:
            upstream.sendall(client.take())
        pump(client.sock, upstream)
