"""The gateway's HTTP server (on the session's door socket) and its client to the vendors.

aiohttp on both sides, in one thread of the worker with its own event loop. Responses pass
through as they arrive (SSE chunk by chunk, never buffered whole); usage is read from them
on the way and counted once the response ends.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
import time
from typing import Any, Callable

import aiohttp
from aiohttp import web

from routinely.config import Settings
from workers.gateway.meter import Meter
from workers.gateway.vendors import (CREDENTIAL_NAMES, VENDORS, StreamUsage, cap_output, credential_headers, model_of,
                                     usage_of)

# hop-by-hop and the agent's own credentials: never forwarded
_DROP_REQUEST = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
                 "content-length", "accept-encoding", "x-api-key", "authorization", "x-goog-api-key"}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def _error(status: int, kind: str, message: str) -> web.Response:
    # Anthropic's error shape; the other vendors' clients show `message` from it too
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


class Gateway:
    """Serve one session's gateway on `socket_path` until close()."""

    def __init__(self, settings: Settings, meter: Meter, socket_path: str, log: Callable[[str], None]) -> None:
        self.settings, self.meter, self.socket_path, self.log = settings, meter, socket_path, log
        self.token = "rly-session-" + secrets.token_urlsafe(32)
        self.refused_at: float | None = None  # monotonic time of the first budget refusal
        self._warned: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failed: Exception | None = None
        self._thread = threading.Thread(target=self._serve, name=f"gateway-{meter.session_id}", daemon=True)

    @classmethod
    def start(cls, settings: Settings, meter: Meter, socket_path: str, log: Callable[[str], None]) -> "Gateway":
        gateway = cls(settings, meter, socket_path, log)
        meter.open()
        gateway._thread.start()
        if not gateway._ready.wait(10) or gateway._failed is not None:
            raise RuntimeError(f"the model gateway did not start: {gateway._failed}")
        return gateway

    @property
    def stop_reason(self) -> str | None:
        return self.meter.stop_reason

    @property
    def last_request(self) -> float:
        return self.meter.last_request

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._setup())
        except Exception as exc:  # reported by start()
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _setup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{vendor}/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._client = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=600))
        await web.UnixSite(self._runner, self.socket_path).start()

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            await self._client.close()
            await self._runner.cleanup()
            await self._loop.shutdown_default_executor()  # the metering threads: none outlives the session
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(10)

    # -- one request
    def _authorized(self, request: web.Request) -> bool:
        bearer = request.headers.get("Authorization", "")
        presented = [request.headers.get("x-api-key", ""), request.headers.get("x-goog-api-key", ""),
                     bearer[7:] if bearer.lower().startswith("bearer ") else "", request.query.get("key", "")]
        return any(p and hmac.compare_digest(p.encode(), self.token.encode()) for p in presented)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        vendor = request.match_info["vendor"]
        if vendor not in VENDORS:
            return _error(404, "not_found_error", f"routinely gateway: no vendor {vendor!r} (anthropic, openai, gemini)")
        if not self._authorized(request):
            return _error(401, "authentication_error", "routinely gateway: wrong or missing session token")
        self.meter.touch()
        spent = self.meter.exhausted()
        if spent:
            return self._refuse(spent)
        path = "/" + request.match_info["tail"]
        raw = await request.read()
        body: Any = None
        if raw and request.content_type == "application/json":
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        left = self.meter.tokens_left()
        if isinstance(body, dict) and left is not None and request.method == "POST" and cap_output(vendor, path, body, left):
            raw = json.dumps(body).encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        credential = credential_headers(vendor, self.settings, request.headers.get("anthropic-beta"))
        if credential is None:
            self._warn_once(f"nocred-{vendor}", f"routinely: the service has no {CREDENTIAL_NAMES[vendor]}: the model "
                                                 "gateway forwards without a credential")
        else:
            headers.update(credential)
        query = [(k, v) for k, v in request.query.items() if k != "key"]
        upstream = VENDORS[vendor].upstream(self.settings) + path
        try:
            async with self._client.request(request.method, upstream, params=query, data=raw or None, headers=headers,
                                            allow_redirects=False) as resp:
                return await self._relay(request, resp, vendor, path, body)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            self._warn_once(f"down-{vendor}", f"routinely: the model gateway cannot reach {VENDORS[vendor].upstream(self.settings)}: "
                                              f"{type(exc).__name__}: {exc}")
            return _error(502, "api_error", f"routinely gateway: the model API cannot be reached ({type(exc).__name__})")

    async def _relay(self, request: web.Request, resp: aiohttp.ClientResponse, vendor: str, path: str,
                     body: Any) -> web.StreamResponse:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        if resp.content_type == "text/event-stream":
            out = web.StreamResponse(status=resp.status, headers=headers)
            await out.prepare(request)
            stream = StreamUsage(vendor)
            async for chunk in resp.content.iter_any():
                stream.feed(chunk)
                await out.write(chunk)
            if stream.seen:  # counted before the stream ends: once the agent has its answer, so does the record
                await self._count(stream.model or model_of(vendor, path, body), stream.tokens)
            await out.write_eof()
            return out
        data = await resp.read()
        if resp.status < 400:
            try:
                found = usage_of(vendor, json.loads(data))
            except ValueError:
                found = None
            if found:
                await self._count(found[0] or model_of(vendor, path, body), found[1])
        return web.Response(status=resp.status, body=data, headers=headers)

    async def _count(self, model: str | None, tokens: dict[str, int]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.meter.count, model, tokens)

    def _refuse(self, spent: str) -> web.Response:
        if self.meter.stop_reason is None:
            self.meter.stop_reason = "budget_exceeded"
            self.refused_at = time.monotonic()
            self.log(f"routinely: budget_exceeded: {spent}; the model gateway refuses further requests")
        return _error(403, "permission_error", f"routinely gateway: budget_exceeded: {spent}")

    def _warn_once(self, key: str, line: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log(line)
