"""A Sentry-like service on the host's loopback, behind a session's credential door (tests of
workers/credentials): it answers `authorized` only to the bearer VALUE and records every request."""
from __future__ import annotations

import http.server
import json
import threading


VALUE = "sntrys_the-real-secret-value-42"  # the secret behind the door: the one bearer the service calls authorized


class FakeService:
    """An HTTP service on the host's loopback that records what reached it: what a credential door forwarded, and
    with which header."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding") == "chunked":  # read whole, as a real service would
                    try:
                        while (size := int(self.rfile.readline().strip() or b"cut", 16)):  # EOF: cut, not the end
                            body += self.rfile.read(size)
                            self.rfile.readline()
                        self.rfile.readline()
                    except (ValueError, OSError):  # the door cut it off (a body past its cap): what came is recorded
                        seen.append({"method": self.command, "path": self.path, "auth": None,
                                     "body": body.decode(errors="replace"), "host": None, "cut": True})
                        return
                seen.append({"method": self.command, "path": self.path, "auth": self.headers.get_all("Authorization"),
                             "body": body.decode(errors="replace"), "host": self.headers.get("Host")})
                if self.path.startswith("/api/0/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "https://elsewhere.test/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps({"path": self.path, "authorized": self.headers.get("Authorization") == f"Bearer {VALUE}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
