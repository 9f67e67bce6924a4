"""The per-session egress proxy: one of the session's doors.

It listens on a unix socket in the session's door folder; inside the session's network
namespace the launcher bridges 127.0.0.1:PORT to it.
HTTP CONNECT (HTTPS) and absolute-URI HTTP requests reach hosts in allow_hosts; anything
else answers 403 and is logged. Names are resolved here, outside the namespace.
"""
from __future__ import annotations

import socket
import socketserver
import threading
from typing import Callable
from urllib.parse import urlsplit

from workers.sandbox.launch import pump

MAX_HEAD = 16 * 1024


def host_allowed(host: str, port: int, allow: list[str]) -> bool:
    """`host`, `host:port` and `*.domain` entries; an entry without a port allows any port."""
    host = host.lower().rstrip(".")
    for entry in allow:
        name, _, want_port = entry.lower().partition(":")
        if want_port and int(want_port) != port:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and host != name[2:]:
                return True
        elif host == name:
            return True
    return False


class EgressProxy:
    def __init__(self, allow: list[str], log: Callable[[str], None], sock: str) -> None:
        self.allow, self.log, self.sock = allow, log, sock
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

    def _refuse(self, client: socket.socket, status: str, why: str) -> None:
        body = f"routinely: {why}\n".encode()
        client.sendall(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                       "Connection: close\r\n\r\n".encode() + body)
        client.close()

    def _handle(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
            if len(head) > MAX_HEAD:
                return self._refuse(client, "431 Request Header Fields Too Large", "request head too large")
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            return self._refuse(client, "400 Bad Request", "not an HTTP proxy request")
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host, port = host.strip("[]"), int(port_text) if port_text.isdigit() else 443
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                return self._refuse(client, "400 Bad Request", "send HTTPS through CONNECT and HTTP as absolute URLs")
            host, port = url.hostname, url.port or 80
        if not host_allowed(host, port, self.allow):
            self.log(f"routinely: blocked egress to {host}:{port} (not in allow_hosts)")
            return self._refuse(client, "403 Forbidden", f"{host}:{port} is not in this routine's allow_hosts")
        try:
            upstream = socket.create_connection((host, port), timeout=10)
            upstream.settimeout(None)
        except OSError as exc:
            return self._refuse(client, "502 Bad Gateway", f"cannot reach {host}:{port}: {exc.strerror or exc}")
        if method.upper() == "CONNECT":
            client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        else:
            url = urlsplit(target)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [l for l in lines[1:] if not l.lower().startswith(("proxy-connection:", "proxy-authorization:"))]
            upstream.sendall(f"{method} {path} {version}\r\n".encode() + "\r\n".join(kept).encode("latin-1") + b"\r\n\r\n" + rest)
            rest = b""
        if rest:
            upstream.sendall(rest)
        pump(client, upstream)
