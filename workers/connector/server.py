"""One session's github connector: an MCP server (streamable HTTP) on a unix socket.

It runs in a thread of the worker with its own asyncio loop (uvicorn, h11), for the session's
lifetime. Every HTTP request must carry the session's bearer token (compared in constant
time); once the session is finished, every request answers 401. A tool call goes:
policy (refused → one-line tool error, GitHub not called) → installation token → GitHub →
record.

What one session may cost the worker here: MAX_CONNECTIONS connections (past it, 503 and
closed, logged once), each with at most MAX_HEAD bytes of an unfinished head and closed after
IDLE_SECONDS without a request; request bodies of at most MAX_BODY (413 past it), read whole
before MCP sees them; the loop's thread plus at most WORKER_THREADS for blocking calls.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import os
import secrets
import threading
import time
from typing import Any, Callable

import anyio.to_thread
import redis
import uvicorn
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from routinely.config import Settings
from routinely.github.github_auth import InstallationTokens, TokenError
from workers.connector.github import GitHubFailed, send
from workers.connector.policy import Policy
from workers.connector.record import Recorder
from workers.connector.tools import Call, register, tool_error
from workers.gateway.door import ConnectionCap, Counted

START_TIMEOUT_SECONDS = 10
MAX_CONNECTIONS = 16  # open at once per session: an MCP client's calls at once, with room to spare
MAX_HEAD = 16 * 1024  # bytes of a request head not yet complete (h11)
MAX_BODY = 1024 * 1024  # one MCP message; GitHub caps an issue or comment body at 65,536 characters
IDLE_SECONDS = 5  # a connection without a request (from its start, or since its last answer) is closed
WORKER_THREADS = 4  # installation tokens, write counts: the blocking calls of this session at once
NOT_CONFIGURED = ("routinely: the GitHub App is not configured on this service (GITHUB_APP_ID and GITHUB_PRIVATE_KEY), "
                  "so the github connector cannot act; ask the operator to configure it")
# requests arrive through the session's bridge as http://127.0.0.1:PORT
_LOCAL = TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                   allowed_hosts=["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*"],
                                   allowed_origins=["http://127.0.0.1:*", "http://localhost:*"])


class ConnectorError(Exception):
    """The connector could not start; str() is the one line for the session log."""


class Connector:
    """Serve the github connector for one session at `socket_path`. `pushed(repo, branch)`
    says whether this session pushed that branch through its push guard."""

    def __init__(self, session_id: str, policy: Policy, socket_path: str, conn: redis.Redis, settings: Settings,
                 tokens: InstallationTokens, pushed: Callable[[str, str], bool], log: Callable[[str], None]) -> None:
        self.session_id, self.policy, self.socket_path = session_id, policy, socket_path
        self.conn, self.settings, self.tokens, self.pushed = conn, settings, tokens, pushed
        self.token = secrets.token_urlsafe(32)
        self.finished = False
        self.writes_made = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # the connector's own, once it serves
        self._write_lock: asyncio.Lock | None = None
        self.record = Recorder(conn, session_id, log, settings.clock)
        # WARNING: the SDK configures logging from this, and at INFO every session would print its
        # session manager starting and stopping on the worker's output
        mcp = MCPServer("github", instructions=policy.prompt(settings.github_app), log_level="WARNING")
        register(mcp, policy, self.run)
        app = mcp.streamable_http_app(json_response=True, transport_security=_LOCAL)
        self.connections = ConnectionCap("github connector", MAX_CONNECTIONS, log)
        # uvicorn's own limit counts the asking connection too: with the cap above it holds back
        # only requests whose callers hung up while their calls run on
        config = uvicorn.Config(_BearerOnly(app, self), uds=socket_path, log_config=None, log_level="warning", lifespan="on",
                                loop="asyncio", timeout_graceful_shutdown=2, access_log=False, ws="none",
                                http=functools.partial(_protocol, self.connections), limit_concurrency=MAX_CONNECTIONS + 1,
                                h11_max_incomplete_event_size=MAX_HEAD, timeout_keep_alive=IDLE_SECONDS)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"github-connector-{session_id}", daemon=True)

    def start(self) -> "Connector":
        """Listen; returns once the socket accepts. Raises ConnectorError."""
        self._thread.start()
        end = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                self.close()
                raise ConnectorError(f"routinely: the github connector could not listen on {self.socket_path}")
            time.sleep(0.01)
        return self

    def _serve(self) -> None:
        try:
            self._server.run()
        except (Exception, SystemExit):  # uvicorn exits when it cannot bind; start() says so in one line
            pass

    def mcp_entry(self, port: int) -> dict[str, Any]:
        """The `github` entry of the session's .mcp.json."""
        return {"type": "http", "url": f"http://127.0.0.1:{port}/mcp", "headers": {"Authorization": f"Bearer {self.token}"}}

    def authorized(self, header: bytes | None) -> bool:
        if self.finished or not header:
            return False
        scheme, _, presented = header.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.token.encode())

    def close(self) -> None:
        """From now on every request answers 401; then stop serving and remove the socket."""
        self.finished = True
        self._server.should_exit = True
        self._thread.join(5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    # -- a tool call
    async def run(self, call: Call) -> CallToolResult:
        if not self.settings.github_app:
            self.record(call, "refused", "the GitHub App is not configured")
            return tool_error(NOT_CONFIGURED)
        full = self.policy.repository(call.owner, call.repo)
        if call.write:
            if self._write_lock is None:
                self._write_lock = asyncio.Lock()
            async with self._write_lock:  # the max_writes check and the count move together
                refusal = await anyio.to_thread.run_sync(self._refusal, call)
                if refusal is None:
                    self.writes_made += 1
        else:
            refusal = self._refusal(call)
        if refusal is not None:
            self.record(call, "refused", refusal, repo=full)
            return tool_error(refusal)
        try:
            token = await anyio.to_thread.run_sync(self.tokens.for_repository, self.conn, full)
            reply = await send(self.settings.github_api_url, token, full, call.request, call.permission)
        except (TokenError, GitHubFailed) as exc:
            line = str(exc) if str(exc).startswith("routinely:") else f"routinely: {exc}"
            self.record(call, "failed", line, repo=full)
            return tool_error(line)
        data = reply.json() if call.write else None
        number = call.number or (data.get("number") if isinstance(data, dict) else None)
        url = data.get("html_url") if isinstance(data, dict) else None
        self.record(call, "ok", url or "", number=number, url=url, repo=full)
        return CallToolResult(content=[TextContent(type="text", text=call.shape(reply))])

    def _refusal(self, call: Call) -> str | None:
        return self.policy.refusal(call.tool, call.owner, call.repo, call.args, self.writes_made, self.pushed)


class _IdleFromTheStart(H11Protocol):
    """h11 as uvicorn runs it, with its idle timer also running before the first request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)


def _protocol(cap: ConnectionCap, **kwargs: Any) -> asyncio.Protocol:
    return Counted(cap, lambda: _IdleFromTheStart(**kwargs))


async def _answer(send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class _HungUp(Exception):
    pass


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None past MAX_BODY. Raises _HungUp."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _HungUp()
        parts.append(message.get("body", b""))
        size += len(parts[-1])
        if size > MAX_BODY:
            return None
        if not message.get("more_body"):
            return b"".join(parts)


class _BearerOnly:
    """Every HTTP request carries this session's token and a body of at most MAX_BODY, or is
    answered before MCP sees it."""

    def __init__(self, app: ASGIApp, connector: Connector) -> None:
        self.app, self.connector = app, connector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # runs on the connector's loop, before any request
            anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
            self.connector.loop = asyncio.get_running_loop()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not self.connector.authorized(headers.get(b"authorization")):
            await _answer(send, 401, b'{"error": "unauthorized: this connector answers only its own session\'s token"}',
                          (b"www-authenticate", b"Bearer"))
            return
        length = headers.get(b"content-length", b"0")
        try:
            body = await _read_body(receive) if not length.isdigit() or int(length) <= MAX_BODY else None
        except _HungUp:
            return
        if body is None:
            await _answer(send, 413, b'{"error": "request body too large: at most %d bytes"}' % MAX_BODY)
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then whatever the server says next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
