"""One session's credential doors: an aiohttp server per declared service, all on one loop thread
of the worker, and one aiohttp client to the origins.

What one session may cost the worker here, whatever it sends: MAX_CONNECTIONS connections for
all its services together (refused with 503 past that, one log line per burst: the gateway's
ConnectionCap), each with a head of at most MAX_LINE + MAX_HEADERS x MAX_FIELD bytes and idle
ones closed after KEEPALIVE_SECONDS (the gateway's figures); request bodies of at most
MAX_BODY, streamed to the origin piece by piece as they arrive (never held whole); answers
streamed back the same way (the transports' 64 KiB buffers). Upstream: 10 s to connect, 600 s
between two pieces of an answer.
"""
from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Awaitable, Callable, Iterable

import aiohttp
from aiohttp import web
from yarl import URL

from routinely.routines.services import Service
from workers.credentials.dial import AddressRefused, CheckedResolver
from workers.gateway.door import ConnectionCap, CountedUnixSite, LoopThread
from workers.gateway.route import shape_problem, shown
from workers.gateway.server import KEEPALIVE_SECONDS, MAX_BODY, MAX_FIELD, MAX_HEADERS, MAX_LINE
from workers.sandbox.addresses import Address

MAX_CONNECTIONS = 32  # open at once per session, all of its services together
PIECE = 64 * 1024
CONNECT_SECONDS, READ_SECONDS = 10, 600
REQUESTS_LOGGED = 1000  # request lines in the session log per session; past that, counted only
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# hop-by-hop, and what the door sets itself: never forwarded as the session sent it
_DROP_REQUEST = frozenset({"host", "connection", "keep-alive", "proxy-connection", "proxy-authorization",
                           "transfer-encoding", "te", "upgrade", "trailer", "expect"})
_DROP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "trailer", "upgrade"})


class _TooLarge(Exception):
    pass


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": f"routinely service door: {message}"}, status=status)


class CredentialDoors(LoopThread):
    """Serve `services` on `sockets` (service name -> unix socket path) until close()."""

    def __init__(self, services: Iterable[Service], headers: dict[str, tuple[str, str]], sockets: dict[str, str],
                 allowed: Iterable[str], own: Iterable[Address], log: Callable[[str], None], label: str = "") -> None:
        """`headers`: service name -> the (name, value) the door adds, the secret filled in."""
        self.services = {s.name: s for s in services}
        self._headers, self.sockets, self.log = headers, sockets, log
        self._allowed, self._own = list(allowed), list(own)
        self.connections = ConnectionCap("service doors", MAX_CONNECTIONS, log)
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failed: Exception | None = None
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._serve, name=f"services-{label}", daemon=True)

    def start(self) -> "CredentialDoors":
        self._thread.start()
        if not self._ready.wait(10) or self._failed is not None:
            raise RuntimeError(f"the service doors did not start: {self._failed}")
        return self

    async def _setup(self) -> None:
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, resolver=CheckedResolver(self._allowed, self._own)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS, sock_read=READ_SECONDS),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        for name, service in self.services.items():
            app = web.Application(client_max_size=MAX_BODY)
            app.router.add_route("*", "/{tail:.*}", self._handler(service))
            runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_SECONDS,
                                   max_line_size=MAX_LINE, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS)
            await runner.setup()
            self._runners.append(runner)
            await CountedUnixSite(runner, self.sockets[name], self.connections).start()

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()
            await self._client.close()
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(10)

    def _handler(self, service: Service) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, service)
        return handle

    # -- one request
    async def _handle(self, request: web.Request, service: Service) -> web.StreamResponse:
        what = shown(request.method, request.raw_path)
        path = request.raw_path.partition("?")[0]
        # the gateway's rule, where one trailing slash is plain (REST APIs end paths so)
        problem = shape_problem(path[:-1] if len(path) > 1 and path.endswith("/") else path)
        if request.method not in METHODS:
            problem = f"the method {request.method[:16]} is not forwarded"
        elif problem is None and not service.allows(path):
            problem = "outside the service's paths"
        if problem:
            self._note(service, f"{what} refused: {problem}")
            return _error(403, f"{what} is refused: {problem}")
        if request.content_length is not None and request.content_length > MAX_BODY:
            self._note(service, f"{what} refused: a body over {MAX_BODY // 2**20} MB")
            return _error(413, f"request bodies are limited to {MAX_BODY // 2**20} MB")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _DROP_REQUEST and k.lower() != service.header_name.lower()}
        name, value = self._headers[service.name]
        headers[name] = value
        over: list[bool] = []  # the body passed MAX_BODY on its way (aiohttp may wrap the error)
        body = self._body(request, over) if request.body_exists else None
        upstream = URL(service.origin + service.base_path + request.raw_path, encoded=True)
        try:
            async with self._client.request(request.method, upstream, data=body, headers=headers,
                                            allow_redirects=False, skip_auto_headers=("User-Agent",)) as resp:
                out = await self._relay(request, resp)
        except (_TooLarge, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if over:
                self._note(service, f"{what} refused: a body over {MAX_BODY // 2**20} MB")
                return _error(413, f"request bodies are limited to {MAX_BODY // 2**20} MB")
            refused = _refused(exc)
            why = refused or f"{type(exc).__name__}"
            self._note(service, f"{what} → 502: {service.origin} cannot be reached: {why}")
            return _error(502, f"{service.name} cannot be reached: {why}")
        finally:
            if body is not None:
                await body.aclose()
        self._note(service, f"{what} → {out.status}")
        return out

    async def _body(self, request: web.Request, over: list[bool]) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.content.iter_chunked(PIECE):
            size += len(chunk)
            if size > MAX_BODY:
                over.append(True)
                raise _TooLarge()
            yield chunk

    async def _relay(self, request: web.Request, resp: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        await out.prepare(request)
        try:
            async for chunk in resp.content.iter_chunked(PIECE):
                await out.write(chunk)
            await out.write_eof()
        except ConnectionError:
            pass  # the session hung up: the rest is not read
        except (aiohttp.ClientError, asyncio.TimeoutError):
            out.force_close()  # the origin broke off mid-answer: so does the door, the session sees a cut answer
        return out

    def _note(self, service: Service, what: str) -> None:
        self.requests += 1
        if self.requests <= REQUESTS_LOGGED:
            more = "; further requests are not logged" if self.requests == REQUESTS_LOGGED else ""
            self.log(f"routinely: service {service.name}: {what}{more}")


def _refused(exc: BaseException) -> str | None:
    """The address rule's line, wherever aiohttp wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressRefused):
            return str(seen)
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None
