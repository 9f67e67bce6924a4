"""The address rule for a service's origin, applied to the very address the door dials.

aiohttp asks `CheckedResolver` for a name's addresses once per connection (and caches the
answer briefly); every address it returns has passed workers.sandbox.addresses.refusal, so a
name that resolves to loopback, link-local or a private range (or changes its answer between
a check and a connect) is never dialed. aiohttp does not ask a resolver about an IP literal:
`literal_refusal` judges those when the door opens. A `host:port` listed in
ROUTINELY_SERVICES_ALLOW_HOSTS skips the rule (a service the operator runs on the host or
the LAN).
"""
from __future__ import annotations

import socket
from typing import Any, Iterable

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from workers.sandbox.addresses import Address, parse_ip, refusal, show

ALLOW_SETTING = "ROUTINELY_SERVICES_ALLOW_HOSTS"


class AddressRefused(OSError):
    """The origin resolves only to addresses the rule refuses; str() says which and why."""


def host_port(host: str, port: int) -> str:
    host = host.lower().strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def literal_refusal(host: str, port: int, allowed: Iterable[str], own: Iterable[Address]) -> str | None:
    """Why an origin given as an IP literal may not be dialed, or None (a name: the resolver judges)."""
    address = parse_ip(host)
    if address is None or host_port(host, port) in set(allowed):
        return None
    why = refusal(address, own)
    return None if why is None else _line(host, port, show(address), why)


def _line(host: str, port: int, address: str, why: str) -> str:
    return (f"{host_port(host, port)} is {address}, {why}: a service door does not dial it unless "
            f"{ALLOW_SETTING} lists {host_port(host, port)}")


class CheckedResolver(AbstractResolver):
    def __init__(self, allowed: Iterable[str], own: Iterable[Address]) -> None:
        self.allowed, self.own = set(allowed), set(own)
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
        found = await self._inner.resolve(host, port, family)
        if host_port(host, port) in self.allowed:
            return found
        passed, refused = [], None
        for entry in found:
            address = parse_ip(entry["host"])
            why = refusal(address, self.own) if address is not None else "not an address"
            if why is None:
                passed.append(entry)
            elif refused is None:
                refused = _line(host, port, entry["host"], why)
        if not passed:
            raise AddressRefused(refused or f"{host_port(host, port)} resolves to no address")
        return passed

    async def close(self) -> None:
        await self._inner.close()
