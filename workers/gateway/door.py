"""What a door's open connections may cost: at most `limit` at once per session.

Shared by the doors served on an asyncio loop (the model gateway, the github connector, the
credential doors; `CountedUnixSite` serves an aiohttp runner on a socket behind the cap).
The count moves in `connection_made`/`connection_lost`, which the loop calls one at a time,
so a burst of connections cannot slip past it. A connection past the cap is answered 503
and closed at once; the first such refusal is one line in the session log, the rest are
counted (`refused`) but not logged.
"""
from __future__ import annotations

import asyncio
import json
from typing import Callable

from aiohttp import web


def refusal(message: str) -> bytes:
    """The whole HTTP answer to a connection past the cap."""
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": message}}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


class ConnectionCap:
    def __init__(self, door: str, limit: int, log: Callable[[str], None]) -> None:
        self.door, self.limit, self.log = door, limit, log
        self.open = 0
        self.refused = 0
        self.answer = refusal(f"routinely {door}: more than {limit} connections at once from this session; "
                              "close some and retry")

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection in, or answer it 503 and close it (False)."""
        if self.open < self.limit:
            self.open += 1
            return True
        self.refused += 1
        if self.refused == 1:
            self.log(f"routinely: the {self.door} refused a connection: the session holds {self.limit} open, its cap; "
                     "further refusals are not logged")
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(self.answer)
        transport.close()
        return False

    def release(self) -> None:
        self.open -= 1


class Counted(asyncio.Protocol):
    """A connection's protocol behind the cap: `make()` builds the real one only for a
    connection counted in, so a refused one costs next to nothing."""

    def __init__(self, cap: ConnectionCap, make: Callable[[], asyncio.Protocol]) -> None:
        self.cap, self.make = cap, make
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.cap.admit(transport):
            self.inner = self.make()
            self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.cap.release()
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class CountedUnixSite(web.UnixSite):
    """An aiohttp runner's unix socket, every connection counted against the session's cap."""

    def __init__(self, runner: web.BaseRunner, path: str, cap: ConnectionCap) -> None:
        super().__init__(runner, path)
        self.cap = cap

    async def start(self) -> None:
        await super(web.UnixSite, self).start()  # BaseSite: registers the site; the listening is ours
        server = self._runner.server
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: Counted(self.cap, server), self._path, backlog=self._backlog)


class LoopThread:
    """A door's own asyncio loop, served on a daemon thread (the gateway's, a session's
    credential doors): `_setup()` runs first and its error is what `start` reports; then the
    loop serves until it is stopped. Subclasses set `_loop`, `_ready` (an Event) and `_failed`."""

    _loop: asyncio.AbstractEventLoop
    _failed: BaseException | None

    async def _setup(self) -> None:
        raise NotImplementedError

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
