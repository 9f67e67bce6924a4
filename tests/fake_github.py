"""A small local HTTP server standing in for GitHub's REST API (GITHUB_API_URL), for tests that
cross process boundaries. It records every request it gets, and answers like GitHub does for
the calls the connector makes; `fail[(method, path)] = status` makes one call fail.

It is also the App's webhook sender: `send()` posts a signed delivery to `hook_url` and keeps
the attempt as GitHub does (a refused connection is status_code 0), `GET /app/hook/deliveries`
lists the attempts newest first, paged by a cursor in the Link header, and `POST
/app/hook/deliveries/{id}/attempts` redelivers: the same body and guid sent again (before it
answers 202), kept as another attempt with `redelivery: true`."""
from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from app.signature import sign

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
        self.hook_url: str | None = None  # the App's webhook URL (http://host:port/webhooks/github)
        self.hook_secret = ""
        self.attempts: list[dict[str, Any]] = []  # GitHub's record of the App's deliveries, oldest first
        self._sent: dict[str, tuple[str, bytes]] = {}  # guid -> (event, body): what a redelivery sends again
        self._attempt_id = 1_000_000
        self._lock = threading.Lock()
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
                status, body, kind, *extra = fake.answer(seen)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
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

    def send(self, event: str, payload: dict[str, Any], guid: str | None = None) -> dict[str, Any]:
        """Deliver a webhook as GitHub does (signed, to hook_url); the attempt it keeps."""
        guid = guid or str(uuid.uuid4())
        body = json.dumps(payload, separators=(",", ":")).encode()
        with self._lock:
            self._sent[guid] = (event, body)
        return self._attempt(guid, event, payload.get("action"), body, redelivery=False)

    def _attempt(self, guid: str, event: str, action: Any, body: bytes, redelivery: bool) -> dict[str, Any]:
        delivered_at = time.time()
        status = 0
        assert self.hook_url, "set hook_url first"
        url = urlsplit(self.hook_url)
        try:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)  # GitHub gives up after 10 s
            conn.request("POST", url.path, body=body, headers={
                "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/fake", "X-GitHub-Event": event,
                "X-GitHub-Delivery": guid, "X-Hub-Signature-256": sign(self.hook_secret, body)})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
            conn.close()
        except (OSError, http.client.HTTPException):
            status = 0  # no answer: GitHub shows it failed
        with self._lock:
            self._attempt_id += 1
            item = {"id": self._attempt_id, "guid": guid, "delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(delivered_at)),
                    "redelivery": redelivery, "duration": 0.01, "status": "OK" if 200 <= status < 300 else "failed",
                    "status_code": status, "event": event, "action": action if isinstance(action, str) else None,
                    "installation_id": 42, "repository_id": 1, "throttled_at": None}
            self.attempts.append(item)
        return item

    def redeliveries(self) -> list[int]:
        """The attempt ids a redelivery was asked of, in order."""
        return [int(r.path.split("/")[4]) for r in self.requests
                if r.method == "POST" and re.fullmatch(r"/app/hook/deliveries/\d+/attempts", r.path)]

    def _deliveries(self, r: Seen) -> tuple[int, Any, str, dict[str, str]]:
        per_page = min(int((r.query.get("per_page") or ["30"])[0]), 100)
        cursor = (r.query.get("cursor") or [None])[0]
        with self._lock:
            newest_first = sorted(self.attempts, key=lambda a: -a["id"])
        if cursor:
            newest_first = [a for a in newest_first if a["id"] < int(cursor.removeprefix("v1_"))]
        page, headers = newest_first[:per_page], {}
        if len(newest_first) > per_page:
            headers["Link"] = f'<{self.url}/app/hook/deliveries?per_page={per_page}&cursor=v1_{page[-1]["id"]}>; rel="next"'
        return 200, page, "application/json; charset=utf-8", headers

    def _redeliver(self, attempt_id: int) -> tuple[int, Any, str]:
        js = "application/json; charset=utf-8"
        with self._lock:
            found = next((a for a in self.attempts if a["id"] == attempt_id), None)
        if found is None:
            return 404, {"message": "Not Found"}, js
        event, body = self._sent[found["guid"]]
        self._attempt(found["guid"], event, found["action"], body, redelivery=True)
        return 202, {}, js

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
        if r.method == "GET" and r.path == "/app/hook/deliveries":
            return self._deliveries(r)
        if r.method == "POST" and (n := re.fullmatch(r"/app/hook/deliveries/(\d+)/attempts", r.path)):
            return self._redeliver(int(n.group(1)))
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
