"""The address rule: which addresses the egress proxy never dials for a session.

Pure functions (no I/O but `host_addresses`): the proxy resolves a name once and asks
`refusal` about the very address it is about to dial, so a name that changes its answer
between a check and a connect (DNS rebinding) gains nothing.

Two kinds of refusal: loopback, unspecified, link-local (cloud metadata), multicast,
broadcast, reserved and the host's own addresses are never opened (`NEVER`); a private range
is opened only by an allow_hosts entry that is an IP literal or CIDR around it (`opened`).
An IPv6 address that carries an IPv4 one (mapped, translated, compatible, NAT64, 6to4,
Teredo, ISATAP) is judged by that IPv4 address too, and the stricter answer wins.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPv4 = ipaddress.IPv4Address

OWN = "one of this host's own addresses"
LINK_LOCAL = "link-local (cloud metadata)"
NEVER = frozenset({"unspecified", "loopback", LINK_LOCAL, "multicast", "broadcast", "reserved", OWN})

_NETWORKS: list[tuple[str, str]] = [
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", LINK_LOCAL),
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
    ("fe80::/10", LINK_LOCAL),
    ("fd00:ec2::254/128", LINK_LOCAL),
    ("fc00::/7", "private"),
    ("ff00::/8", "multicast"),
    ("fec0::/10", "private (site-local)"),
    ("64:ff9b:1::/48", "private (local NAT64)"),
]
_RULES = [(ipaddress.ip_network(net), why) for net, why in _NETWORKS]


def _last32(address: ipaddress.IPv6Address) -> list[IPv4]:
    return [IPv4(address.packed[12:])]


def _local_nat64(address: ipaddress.IPv6Address) -> list[IPv4]:
    """64:ff9b:1::/48 is carved into NAT64 prefixes of /48, /56, /64 or /96 (RFC 6052 layouts,
    bits 64-71 skipped): read every layout. Zeros one layout pads with read as 0.x.x.x in
    another, and no translator sends there, so those readings are dropped."""
    p = address.packed
    found = [IPv4(p[6:8] + p[9:11]), IPv4(p[7:8] + p[9:12]), IPv4(p[9:13]), IPv4(p[12:16])]
    return [a for a in found if a.packed[0] != 0]


def _compatible(address: ipaddress.IPv6Address) -> list[IPv4]:
    # ::a.b.c.d (deprecated); :: and ::1 are themselves unspecified and loopback
    return _last32(address) if int(address) > 1 else []


# IPv6 forms that carry an IPv4 address (RFC 4291, 6145, 6052, 8215, 3056, 4380)
_EMBEDDING: list[tuple[str, Callable[[ipaddress.IPv6Address], list[IPv4]]]] = [
    ("::ffff:0:0/96", _last32),  # IPv4-mapped
    ("::ffff:0:0:0/96", _last32),  # IPv4-translated (SIIT)
    ("::/96", _compatible),  # IPv4-compatible
    ("64:ff9b::/96", _last32),  # NAT64, well-known prefix
    ("64:ff9b:1::/48", _local_nat64),  # NAT64, local-use prefix
    ("2002::/16", lambda a: [a.sixtofour] if a.sixtofour else []),  # 6to4: the relay is the IPv4 address
    ("2001::/32", lambda a: list(a.teredo or ())),  # Teredo: server, and the client (XOR-ed)
]
_EMBEDDINGS = [(ipaddress.IPv6Network(net), read) for net, read in _EMBEDDING]


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
            return IPv4(socket.inet_aton(text))
        except OSError:
            return None
    return None


def embedded_ipv4(address: Address) -> list[IPv4]:
    """The IPv4 addresses an IPv6 address carries: mapped, translated, compatible, NAT64, 6to4,
    Teredo (server and client) and an ISATAP interface id (`::5efe:a.b.c.d` on any prefix)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [v4 for network, read in _EMBEDDINGS if address in network for v4 in read(address)]
    if address.packed[8:12] in (b"\x00\x00\x5e\xfe", b"\x02\x00\x5e\xfe"):  # ISATAP (RFC 5214)
        found += _last32(address)
    return list(dict.fromkeys(found))


def _classify(address: Address, own: set[Address]) -> str | None:
    """The range's reason; a private address that is the host's own is the host's own."""
    why = next((why for network, why in _RULES if address.version == network.version and address in network), None)
    return OWN if why not in NEVER and address in own else why


def refusal(address: Address, own: Iterable[Address] = (), opened: Iterable[Network] = ()) -> str | None:
    """Why the proxy must not dial `address`, or None when it may.

    `own` are the host's own addresses (whatever range they are in); `opened` the networks the
    routine's allow_hosts opens (IP literals and CIDRs): they open private ranges, never what
    is in `NEVER`. The address and every IPv4 address it carries are judged; a never-opened
    one refuses at once, a private one unless `opened` covers it."""
    own, opened = set(own), list(opened)
    private = None
    for candidate in [address, *embedded_ipv4(address)]:
        why = _classify(candidate, own)
        if why in NEVER:
            return why
        if why is not None and private is None and not any(
                candidate.version == net.version and candidate in net for net in opened):
            private = why
    return private


def never_opened(why: str) -> bool:
    """True for a refusal no allow_hosts entry lifts."""
    return why in NEVER


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
                    found.add(IPv4(packed[20:24]))
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
