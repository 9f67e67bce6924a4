"""A small fake of the model vendors' HTTP APIs, for cross-process tests with real agents.

`FakeMessages` speaks enough of Anthropic's Messages API (`POST /v1/messages`, streamed as
SSE or not) for the real Claude Code CLI: the first turn asks for the Bash tool with the
test's command, the turn after a tool result answers with final text. With `loop=True`
every turn asks for the tool again (a runaway agent). Every request is recorded (path,
headers, JSON body) and every response reports fixed usage numbers the tests compare with
what Routinely metered. Any other path (OpenAI, Gemini) answers a small JSON body and is
recorded the same way.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 7, "cache_read_input_tokens": 5}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeMessages:
    command: str = "echo tool-ran"
    final_text: str = "All done."
    loop: bool = False
    usage: dict[str, int] = field(default_factory=lambda: dict(USAGE))
    requests: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # small writes go out at once (no delayed-ACK stalls)

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._record(self, None)
                self._json(200, {"ok": True})

            def do_HEAD(self) -> None:
                fake._record(self, None)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                fake._record(self, body)
                path = self.path.split("?", 1)[0]
                if path.endswith("/v1/messages/count_tokens"):
                    return self._json(200, {"input_tokens": 10})
                if path.endswith("/v1/messages"):
                    message = fake.reply(body or {})
                    if (body or {}).get("stream"):
                        return self._sse(message)
                    return self._json(200, message)
                self._json(200, {"id": "fake", "path": path, "usage": {"input_tokens": 1, "output_tokens": 1}})

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, message: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in stream_events(message):
                    chunk = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _record(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        with self._lock:
            self.requests.append(Seen(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body))

    @property
    def turns(self) -> list[Seen]:
        """The Messages requests that asked for a turn of the agent (those with tools)."""
        return [r for r in self.requests if r.path.split("?")[0].endswith("/v1/messages") and isinstance(r.body, dict)
                and r.body.get("tools")]

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content")
        after_tool = isinstance(content, list) and any(isinstance(c, dict) and c.get("type") == "tool_result" for c in content)
        n = len(self.requests)
        if body.get("tools") and (self.loop or not after_tool):
            blocks = [{"type": "tool_use", "id": f"toolu_{n:04d}", "name": "Bash",
                       "input": {"command": self.command, "description": "run the test's command"}}]
            stop = "tool_use"
        else:
            blocks = [{"type": "text", "text": self.final_text}]
            stop = "end_turn"
        return {"id": f"msg_{n:04d}", "type": "message", "role": "assistant", "model": body.get("model", "unknown"),
                "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": dict(self.usage)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stream_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message as the Messages API streams it: usage split between start and delta."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            events.append({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": block["text"]}})
        else:
            events.append({"type": "content_block_start", "index": i,
                           "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
            events.append({"type": "content_block_delta", "index": i,
                           "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
        events.append({"type": "content_block_stop", "index": i})
    events.append({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}})
    events.append({"type": "message_stop"})
    return events
