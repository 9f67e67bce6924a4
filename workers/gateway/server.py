"""The gateway's HTTP server (on the session's door socket) and its client to the vendors.

aiohttp on both sides, in one thread of the worker with its own event loop (and at most
METER_THREADS threads that write usage to Redis). Only the vendors' model endpoints are
forwarded (workers/gateway/route.py). Responses pass through as they arrive (SSE chunk by
chunk, JSON too), never held whole: usage is picked from them on the way and counted once
the response ends.

What one session may cost the worker here, whatever it sends: MAX_CONNECTIONS connections
(each with a head of at most MAX_LINE + MAX_HEADERS x MAX_FIELD bytes, idle ones closed after
KEEPALIVE_SECONDS); request bodies of at most MAX_BODY, and at most MAX_HELD bytes of them
held at once (a request waits for room); per response, the transport's read and write
buffers (64 KiB each) and the picked usage values.
"""
from __future__ import annotations

import asyncio
import copy
import hmac
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable

import aiohttp
from aiohttp import web

from routinely.config import Settings
from workers.gateway.door import ConnectionCap, CountedUnixSite, LoopThread
from workers.gateway.jsonpick import Picker, splice
from workers.gateway.meter import Meter
from workers.gateway.route import PROBES, Refused, Route, route, shown
from workers.gateway.vendors import CREDENTIAL_NAMES, VENDORS, Usage, cap_output, credential_headers, model_of

MAX_CONNECTIONS = 64  # open at once per session: an agent's parallel requests, with room to spare
MAX_LINE = MAX_FIELD = 8190  # bytes of the request line, of one header
MAX_HEADERS = 64  # the Claude Code CLI (2.1) sends 21
KEEPALIVE_SECONDS = 30.0  # an idle connection (no request, or none since the last answer) is closed
MAX_BODY = 32 * 1024 * 1024  # one request body: the Messages API's own limit
MAX_HELD = 2 * MAX_BODY  # request bodies held at once
MAX_BODY_EVENTS = 1_000_000  # JSON values and separators read one by one in a body (~1 s of CPU)
SEND_PIECE = 256 * 1024
METER_THREADS = 2
REFUSALS_LOGGED = 20  # refused requests named in the session log; past that, counted only

# hop-by-hop and the agent's own credentials: never forwarded
_DROP_REQUEST = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
                 "content-length", "accept-encoding", "x-api-key", "authorization", "x-goog-api-key"}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def _error(status: int, kind: str, message: str) -> web.Response:
    # Anthropic's error shape; the other vendors' clients show `message` from it too
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


class _TooLarge(Exception):
    pass


_MISSING = object()


async def _pieces(raw: bytearray) -> AsyncIterator[bytearray]:
    """The body in pieces (copies: no view pins it), each written once the last has drained:
    sent whole, a slow vendor would leave a copy of the rest in the transport's buffer."""
    for start in range(0, len(raw), SEND_PIECE):
        yield raw[start:start + SEND_PIECE]


class _Held:
    """Bytes of request bodies the gateway holds at once. Everything runs on the gateway's one
    loop, so a check and its update are never interleaved; `give` wakes every waiter to re-check."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def take(self, size: int) -> None:
        while self.used + size > self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class Gateway(LoopThread):
    """Serve one session's gateway on `socket_path` until close()."""

    def __init__(self, settings: Settings, meter: Meter, socket_path: str, log: Callable[[str], None]) -> None:
        self.settings, self.meter, self.socket_path, self.log = settings, meter, socket_path, log
        self.token = "rly-session-" + secrets.token_urlsafe(32)
        self.refused_at: float | None = None  # monotonic time of the first budget refusal
        self.connections = ConnectionCap("model gateway", MAX_CONNECTIONS, log)
        self.refused_requests = 0
        self._held = _Held(MAX_HELD)
        self._warned: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(ThreadPoolExecutor(METER_THREADS, thread_name_prefix=f"gateway-meter-{meter.session_id}"))
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

    async def _setup(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_SECONDS,
                                     max_line_size=MAX_LINE, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS)
        await self._runner.setup()
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600))
        await CountedUnixSite(self._runner, self.socket_path, self.connections).start()

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
        if (request.method, request.raw_path) in PROBES:
            return web.Response(status=200)
        if not self._authorized(request):
            return _error(401, "authentication_error", "routinely gateway: wrong or missing session token")
        try:
            found = route(request.method, request.raw_path)
        except Refused as exc:
            return self._refuse_path(request, str(exc))
        self.meter.touch()
        spent = self.meter.exhausted()
        if spent:
            return self._refuse(spent)
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            return _error(415, "invalid_request_error", "routinely gateway: send the request body uncompressed")
        size = request.content_length if request.content_length is not None else MAX_BODY
        if size > MAX_BODY:
            return self._too_large()
        await self._held.take(size)
        try:
            return await self._pass(request, found)
        finally:
            self._held.give(size)

    async def _pass(self, request: web.Request, found: Route) -> web.StreamResponse:
        """Read the body, cap it, forward it; nothing refers to the body once this returns."""
        try:
            body, picker = await self._read(request, found.vendor)
        except _TooLarge:
            return self._too_large()
        fields = {p[0]: value for p, value in picker.values.items()}
        problem = self._cap(found, body, picker, fields)
        if problem:
            return _error(400, "invalid_request_error", f"routinely gateway: {problem}")
        return await self._forward(request, found, body, model_of(found.vendor, found.path, fields))

    async def _read(self, request: web.Request, vendor: str) -> tuple[bytearray, Picker]:
        """The body (at most MAX_BODY, else _TooLarge) and what the gateway reads in it. With a
        Content-Length it goes into one buffer of that size (grown piece by piece, a large
        buffer may be copied as it grows: twice the memory for a moment)."""
        picker = Picker.of([(name,) for name in VENDORS[vendor].request_fields], MAX_BODY_EVENTS)
        known = request.content_length
        body = bytearray(known or 0)
        size = 0
        async for chunk in request.content.iter_any():
            if size + len(chunk) > (known if known is not None else MAX_BODY):
                raise _TooLarge()
            if known is None:
                body += chunk
            else:
                body[size:size + len(chunk)] = chunk
            size += len(chunk)
            picker.feed(chunk)
        del body[size:]
        return body, picker

    def _cap(self, found: Route, body: bytearray, picker: Picker, fields: dict[str, Any]) -> str | None:
        """Lower the output cap in `body` (in place) to what the token budget leaves; why it
        cannot be, or None."""
        left = self.meter.tokens_left()
        if left is None or found.counts_only:
            return None
        if picker.failed or picker.overflow:
            return "the request body cannot be capped: " + (
                picker.failed or f"its {'/'.join(sorted(p[0] for p in picker.overflow))} is too large")
        before = copy.deepcopy(fields)
        if cap_output(found.vendor, found.path, fields, left):
            try:
                splice(body, picker, {k: v for k, v in fields.items() if before.get(k, _MISSING) != v})
            except ValueError as exc:
                return str(exc)
        return None

    async def _forward(self, request: web.Request, found: Route, body: bytearray, model: str | None) -> web.StreamResponse:
        vendor = found.vendor
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers["Accept-Encoding"] = "identity"  # the meter reads the response as it passes (and aiohttp decodes any other)
        headers["Content-Length"] = str(len(body))
        credential = credential_headers(vendor, self.settings, request.headers.get("anthropic-beta"))
        if credential is None:
            self._warn_once(f"nocred-{vendor}", f"routinely: the service has no {CREDENTIAL_NAMES[vendor]}: the model "
                                                 "gateway forwards without a credential")
        else:
            headers.update(credential)
        query = [(k, v) for k, v in request.query.items() if k != "key"]
        upstream = VENDORS[vendor].upstream(self.settings) + found.path
        pieces = _pieces(body)
        try:
            async with self._client.request("POST", upstream, params=query, data=pieces, headers=headers,
                                            allow_redirects=False) as resp:
                return await self._relay(request, resp, vendor, found.path, model)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            self._warn_once(f"down-{vendor}", f"routinely: the model gateway cannot reach {VENDORS[vendor].upstream(self.settings)}: "
                                              f"{type(exc).__name__}: {exc}")
            return _error(502, "api_error", f"routinely gateway: the model API cannot be reached ({type(exc).__name__})")
        finally:
            await pieces.aclose()  # lets go of the body now, not when the GC finds aiohttp's request objects

    async def _relay(self, request: web.Request, resp: aiohttp.ClientResponse, vendor: str, path: str,
                     model: str | None) -> web.StreamResponse:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        stream = resp.content_type == "text/event-stream"
        usage = Usage(vendor, stream) if stream or resp.status < 400 else None
        out = web.StreamResponse(status=resp.status, headers=headers)  # chunked: its end comes after the count
        await out.prepare(request)
        gone = False  # the agent hung up: the rest is still read, for the meter (the vendor bills it)
        async for chunk in resp.content.iter_any():
            if usage is not None:
                usage.feed(chunk)
            if not gone:
                try:
                    await out.write(chunk)
                except ConnectionError:
                    gone = True
            elif usage is None:
                break
        if usage is not None:
            usage.finish()
            if usage.seen:  # counted before the response ends: once the agent has its answer, so does the record
                await self._count(usage.model or model, usage.tokens)
        if not gone:
            try:
                await out.write_eof()
            except ConnectionError:
                pass
        return out

    async def _count(self, model: str | None, tokens: dict[str, int]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.meter.count, model, tokens)

    def _refuse(self, spent: str) -> web.Response:
        if self.meter.stop_reason is None:
            self.meter.stop_reason = "budget_exceeded"
            self.refused_at = time.monotonic()
            self.log(f"routinely: budget_exceeded: {spent}; the model gateway refuses further requests")
        return _error(403, "permission_error", f"routinely gateway: budget_exceeded: {spent}")

    def _refuse_path(self, request: web.Request, why: str) -> web.Response:
        """403, and one line in the session log (the first REFUSALS_LOGGED times)."""
        self.refused_requests += 1
        what = shown(request.method, request.raw_path)
        if self.refused_requests <= REFUSALS_LOGGED:
            more = "; further refusals are not logged" if self.refused_requests == REFUSALS_LOGGED else ""
            self.log(f"routinely: the model gateway refused {what}: {why}{more}")
        return _error(403, "permission_error", f"routinely gateway: {what} is refused: {why}; the gateway forwards "
                                               "only the vendors' model endpoints")

    def _too_large(self) -> web.Response:
        return _error(413, "request_too_large", f"routinely gateway: request bodies are limited to {MAX_BODY // 2**20} MB")

    def _warn_once(self, key: str, line: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log(line)
