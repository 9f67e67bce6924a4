"""A small local HTTP server standing in for GitHub's REST API (GITHUB_API_URL), for tests that
cross process boundaries. It records every request it gets, and answers like GitHub does for
the calls the connector makes; `fail[(method, path)] = status` makes one call fail."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

INSTALLATION_TOKEN = "ghs_FAKEinstallationTOKEN0123456789"
PREFIX = "/api/v3"  # as on GitHub Enterprise Server


@dataclass
class Seen:
    method: str
    path: str  # without PREFIX
    query: dict[str, list[str]]
    body: Any
    authorization: str
    accept: str


class FakeGitHub:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.fail: dict[tuple[str, str], int] = {}
        self._next = 100
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = url.path[len(PREFIX):] if url.path.startswith(PREFIX) else url.path
                seen = Seen(self.command, path, parse_qs(url.query), json.loads(raw) if raw else None,
                            self.headers.get("Authorization", ""), self.headers.get("Accept", ""))
                fake.requests.append(seen)
                status, body, kind = fake.answer(seen)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{PREFIX}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[Seen]:
        """Everything but the minting of installation tokens."""
        return [r for r in self.requests if not r.path.startswith("/app/")]

    def number(self) -> int:
        self._next += 1
        return self._next

    def answer(self, r: Seen) -> tuple[int, Any, str]:
        js = "application/json; charset=utf-8"
        failing = self.fail.get((r.method, r.path))
        if failing:
            return failing, {"message": "Resource not accessible by integration"}, js
        if r.method == "POST" and re.fullmatch(r"/app/installations/\d+/access_tokens", r.path):
            return 201, {"token": INSTALLATION_TOKEN, "expires_at": "2099-01-01T00:00:00Z"}, js
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", r.path)
        if not m:
            return 404, {"message": "Not Found"}, js
        owner, repo, tail = m.group(1), m.group(2), m.group(3) or ""
        web = f"https://github.example/{owner}/{repo}"
        if r.method == "GET":
            if n := re.fullmatch(r"/pulls/(\d+)", tail):
                if "diff" in r.accept:
                    return 200, "diff --git a/app.py b/app.py\n+print('hi')\n", "text/plain; charset=utf-8"
                return 200, {"number": int(n.group(1)), "title": "Add app", "html_url": f"{web}/pull/{n.group(1)}",
                             "head": {"ref": "feature"}, "base": {"ref": "main"}}, js
            if re.fullmatch(r"/pulls/\d+/files", tail):
                return 200, [{"filename": "app.py", "status": "added", "additions": 1}], js
            if tail in ("/pulls", "/issues", "/commits"):
                return 200, [{"number": 7, "title": "an issue", "html_url": f"{web}/issues/7"}], js
            if n := re.fullmatch(r"/issues/(\d+)", tail):
                return 200, {"number": int(n.group(1)), "title": "an issue", "html_url": f"{web}/issues/{n.group(1)}"}, js
            if tail.startswith("/contents/"):
                import base64

                return 200, {"type": "file", "encoding": "base64", "path": tail[10:],
                             "content": base64.b64encode(b"print('hello')\n").decode()}, js
        if r.method == "POST":
            if n := re.fullmatch(r"/issues/(\d+)/comments", tail):
                cid = self.number()
                return 201, {"id": cid, "html_url": f"{web}/issues/{n.group(1)}#issuecomment-{cid}", "body": r.body["body"]}, js
            if n := re.fullmatch(r"/pulls/(\d+)/reviews", tail):
                rid = self.number()
                state = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}.get(r.body.get("event"), "COMMENTED")
                return 200, {"id": rid, "state": state, "html_url": f"{web}/pull/{n.group(1)}#pullrequestreview-{rid}"}, js
            if tail == "/pulls":
                num = self.number()
                return 201, {"id": num * 10, "number": num, "html_url": f"{web}/pull/{num}", "draft": r.body.get("draft", False),
                             "state": "open"}, js
            if tail == "/issues":
                num = self.number()
                return 201, {"id": num * 10, "number": num, "html_url": f"{web}/issues/{num}", "state": "open"}, js
        if r.method == "PATCH" and (n := re.fullmatch(r"/issues/(\d+)", tail)):
            return 200, {"id": 1, "number": int(n.group(1)), "html_url": f"{web}/issues/{n.group(1)}",
                         "state": (r.body or {}).get("state", "open"),
                         "labels": [{"name": l} for l in (r.body or {}).get("labels", [])]}, js
        return 404, {"message": "Not Found"}, js
