"""The address rule: which addresses the egress proxy never dials for a session.

Pure functions (no I/O but `host_addresses`): the proxy resolves a name once and asks
`refusal` about the very address it is about to dial, so a name that changes its answer
between a check and a connect (DNS rebinding) gains nothing.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NETWORKS: list[tuple[str, str]] = [
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "private (carrier-grade NAT)"),
    ("192.0.0.0/24", "private (IETF protocol assignments)"),
    ("198.18.0.0/15", "private (benchmarking)"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local (cloud metadata)"),
    ("fd00:ec2::254/128", "link-local (cloud metadata)"),
    ("fc00::/7", "private"),
    ("ff00::/8", "multicast"),
    ("fec0::/10", "private (site-local)"),
    ("64:ff9b:1::/48", "private (local NAT64)"),
]
_RULES = [(ipaddress.ip_network(net), why) for net, why in _NETWORKS]


def parse_ip(text: str) -> Address | None:
    """An IP literal in any form a resolver or a URL parser accepts, or None for a name.

    Beside the canonical forms this takes what inet_aton takes — `2130706433`, `0x7f.1`,
    `0177.0.0.1`, `127.1` — because libc (and so the client) would dial them as addresses."""
    text = text.strip().strip("[]").rstrip(".")
    if "%" in text:  # fe80::1%eth0: the zone does not change which address it is
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv6 one (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, 6to4, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    packed = address.packed
    if packed[:12] == bytes(12) and packed[12:] not in (bytes(4), bytes(3) + b"\x01"):
        return ipaddress.IPv4Address(packed[12:])  # ::a.b.c.d (deprecated compatible form)
    if address.sixtofour is not None:
        return address.sixtofour
    if packed[:12] == bytes.fromhex("0064ff9b0000000000000000"):
        return ipaddress.IPv4Address(packed[12:])  # 64:ff9b::a.b.c.d (well-known NAT64)
    return None


def refusal(address: Address, own: Iterable[Address] = ()) -> str | None:
    """Why the proxy must not dial `address`, or None when it is a public address.

    `own` are the host's own addresses (whatever range they are in)."""
    own = set(own)
    candidates = [a for a in (address, embedded_ipv4(address)) if a is not None]
    for candidate in candidates:
        for network, why in _RULES:
            if candidate.version == network.version and candidate in network:
                return why
    if any(candidate in own for candidate in candidates):
        return "one of this host's own addresses"
    return None


def show(address: Address) -> str:
    """An address as people write it (`::ffff:127.0.0.1`, not `::ffff:7f00:1`)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def host_addresses() -> set[Address]:
    """This host's own addresses (every interface), read from the kernel."""
    found: set[Address] = set()
    try:
        import fcntl
        import struct

        with open("/proc/net/if_inet6") as f:
            for line in f:
                found.add(ipaddress.IPv6Address(bytes.fromhex(line.split()[0])))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s, 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
                    found.add(ipaddress.IPv4Address(packed[20:24]))
                except OSError:
                    continue
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(info[4][0].split("%")[0]))
    except (OSError, ValueError):
        pass
    return found
