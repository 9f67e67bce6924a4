#!/usr/bin/env python3
"""The egress proxy's HTTP head and SOCKS5 parsing against h11 and socksio (issue #28).

What is timed, per parse, on bytes already in memory (no sockets: a stand-in socket hands
the bytes over in one recv and swallows what is sent back):

  ours, HTTP     what EgressProxy._http does before it dials: Conn.head (find the head in
                 the buffer, under the line/field/byte caps), Head.parse, the request line
                 split, Head.framing(request=True)
  h11, HTTP      h11.Connection(SERVER, max_incomplete_event_size = our head cap),
                 receive_data, next_event() -> Request (h11 works out the framing in it)
  ours, SOCKS5   EgressProxy._socks itself (greeting, method reply, CONNECT request, reply),
                 with `dial` and the tunnel stubbed out
  socksio        socksio is a client library: it has no parser for a client's greeting or
                 request (SOCKS5AuthMethodsRequest and SOCKS5CommandRequest only dump). The
                 closest it has is SOCKS5Reply.loads, whose layout (VER, code, RSV, ATYP,
                 ADDR, PORT) is the request's; it stands in for the CONNECT parse, after the
                 greeting read by hand as ours reads it. socksio caches decoded addresses
                 (lru_cache, 64): the same target parsed again is a cache hit, so it is
                 also timed with that cache emptied before each parse (a new target).

Neither side splits an absolute-form URL (the proxy's urlsplit would be the same for both).
Each case runs three times, ours and the library interleaved. Then both are fed tricky
inputs and whether each accepts or refuses is tabulated.

  python bench/proxy_parsers.py [--seconds 0.4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import h11  # noqa: E402
from socksio import socks5  # noqa: E402
from socksio.exceptions import ProtocolError  # noqa: E402
from socksio.utils import decode_address  # noqa: E402

from workers.sandbox.egress import Caps, Conn, EgressProxy, Head, Refused  # noqa: E402

CAPS = Caps()


class Handed:
    """A socket that has `data` to read once, then the end of stream; sends go nowhere."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, most: int) -> bytes:
        out, self.data = self.data[:most], self.data[most:]
        return out

    def settimeout(self, _: float) -> None:
        pass

    def sendall(self, _: bytes) -> None:
        pass


# -- HTTP

def ours_http(data: bytes) -> tuple[str, str, Any]:
    """As EgressProxy._handle and _http read a request head; Refused (or ValueError) when refused."""
    client = Conn(Handed(data), CAPS)
    client.fill(CAPS.piece)
    raw = client.head(CAPS.idle)
    if raw is None:
        raise Refused("no head")
    head = Head.parse(raw)
    parts = head.first.split(" ")
    if len(parts) != 3:
        raise Refused("not an HTTP proxy request", "400 Bad Request")
    method, target, _ = parts
    return method, target, head.framing(request=True)


def h11_http(data: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=CAPS.head_bytes)
    conn.receive_data(data)
    event = conn.next_event()
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError(f"no request: {event!r}")
    return event


CONNECT = (b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n"
           b"User-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n")
GET = (b"GET http://deb.debian.org/debian/dists/bookworm/InRelease HTTP/1.1\r\n"
       b"Host: deb.debian.org\r\n"
       b"User-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n"
       b"Accept: */*\r\n"
       b"Accept-Encoding: gzip, deflate\r\n"
       b"Accept-Language: en-US,en;q=0.9\r\n"
       b"Cache-Control: max-age=0\r\n"
       b"If-Modified-Since: Sat, 07 Dec 2024 09:00:00 GMT\r\n"
       b"X-Request-Id: 6f1c2a9e-3b7d-4e0a-9d51-2c8f7a6b4e10\r\n"
       b"Proxy-Connection: keep-alive\r\n"
       b"Connection: keep-alive\r\n\r\n")


def big_head(size: int = 16 * 1024) -> bytes:
    """A POST of ~`size` bytes of head: a 6 KiB cookie and 32 tracing fields of ~300 B."""
    lines = [b"POST http://upload.example.com/v1/items?batch=1 HTTP/1.1", b"Host: upload.example.com",
             b"Content-Type: application/json", b"Content-Length: 2",
             b"Cookie: " + b"; ".join(b"c%02d=%s" % (i, b"v" * 110) for i in range(52))]
    i = 0
    while sum(len(x) + 2 for x in lines) + 2 < size - 330:
        lines.append(b"X-Trace-%02d: %s" % (i, b"t" * 300))
        i += 1
    head = b"\r\n".join(lines)
    pad = size - len(head) - 4 - len(b"\r\nX-Pad: ")
    return head + b"\r\nX-Pad: " + b"p" * pad + b"\r\n\r\n"


BIG = big_head()
HTTP_CASES = {"CONNECT host:443": CONNECT, "absolute-form GET, 10 fields": GET, f"16 KiB head ({BIG.count(b':') - 1} fields)": BIG}


# -- SOCKS5

def _socks_proxy() -> EgressProxy:
    """EgressProxy with nothing behind it: `_socks` runs whole, `dial` records the target."""
    proxy = object.__new__(EgressProxy)
    proxy.caps, proxy.clock = CAPS, time.monotonic
    proxy.dial = lambda host, port: proxy.__dict__.__setitem__("target", (host, port))
    proxy._track = proxy._untrack = proxy._refused = lambda *a: None
    proxy._tunnel = lambda a, b: None
    return proxy


PROXY = _socks_proxy()


class Answers(Handed):
    __slots__ = ("sent",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data


def ours_socks(data: bytes) -> tuple[str, int]:
    PROXY.__dict__.pop("target", None)
    sock = Answers(data)
    client = Conn(sock, CAPS)
    client.fill(CAPS.piece)
    PROXY._socks(client)
    if "target" not in PROXY.__dict__:
        raise ValueError(f"refused: answered {sock.sent.hex()}")
    return PROXY.__dict__["target"]


def socksio_socks(data: bytes) -> tuple[str, int]:
    # the greeting as ours reads it (socksio cannot parse one), then the request's layout as a reply's
    count = data[1]
    if data[:1] != b"\x05" or 0 not in data[2:2 + count]:
        raise ProtocolError("greeting")
    request = socks5.SOCKS5Reply.loads(data[2 + count:])
    return request.addr, request.port


def socksio_cold(data: bytes) -> tuple[str, int]:
    """socksio with its address cache (lru_cache on decode_address) emptied first: a new target."""
    decode_address.cache_clear()
    return socksio_socks(data)


GREETING = b"\x05\x01\x00"
SOCKS_CASES = {
    "CONNECT domain (api.github.com:443)": GREETING + b"\x05\x01\x00\x03\x0eapi.github.com\x01\xbb",
    "CONNECT IPv4 (140.82.112.6:443)": GREETING + b"\x05\x01\x00\x01\x8c\x52\x70\x06\x01\xbb",
    "CONNECT IPv6 (2606:50c0:8000::154:443)": GREETING + b"\x05\x01\x00\x04"
    + bytes.fromhex("260650c0800000000000000000000154") + b"\x01\xbb",
}


# -- timing

def per_call_us(parse: Callable[[bytes], Any], data: bytes, seconds: float) -> float:
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds / 10:  # how many fit in a tenth
        parse(data)
        n += 1
    n = max(10, n * 10)
    t = time.perf_counter()
    for _ in range(n):
        parse(data)
    return (time.perf_counter() - t) / n * 1e6


def timing(label: str, cases: dict[str, bytes], ours: Callable, theirs: Callable, name: str, seconds: float) -> list[str]:
    rows = []
    for case, data in cases.items():
        ours(data), theirs(data)  # both parse it
        got: dict[str, list[float]] = {"ours": [], name: []}
        for run in range(3):
            pair = [("ours", ours), (name, theirs)]
            for who, fn in (pair if run % 2 == 0 else pair[::-1]):
                got[who].append(per_call_us(fn, data, seconds))
        o, l = statistics.median(got["ours"]), statistics.median(got[name])
        runs = lambda xs: " / ".join(f"{x:.1f}" for x in xs)  # noqa: E731
        rows.append(f"| {label}: {case} ({len(data)} B) | {o:.1f} ({runs(got['ours'])}) | {l:.1f} ({runs(got[name])}) "
                    f"| {l / o:.2f}x |")
    return rows


# -- behaviour

def _req(*fields: bytes, first: bytes = b"GET http://example.com/ HTTP/1.1", end: bytes = b"\r\n") -> bytes:
    return end.join((first, b"Host: example.com", *fields)) + end + end


HTTP_TRICKY = {
    "obs-fold (a field continued on an indented line)": _req(b"X-Long: one", b"  two"),
    "duplicate Content-Length, same value": _req(b"Content-Length: 5", b"Content-Length: 5"),
    "duplicate Content-Length, different values": _req(b"Content-Length: 5", b"Content-Length: 6"),
    "Content-Length + Transfer-Encoding: chunked": _req(b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    "bare LF line ends": _req(b"Accept: */*", end=b"\n"),
    "NUL in a field value": _req(b"X-A: a\x00b"),
    "bare CR in a field value": _req(b"X-A: a\rb"),
    "overlong line (a 20 KiB field, head < 64 KiB)": _req(b"X-Big: " + b"b" * 20 * 1024),
    "space before the colon": _req(b"Host : example.org"),
    "Transfer-Encoding: gzip (not chunked) on a request": _req(b"Transfer-Encoding: gzip"),
    "Transfer-Encoding: chunked, gzip": _req(b"Transfer-Encoding: chunked, gzip"),
    "Content-Length: +5": _req(b"Content-Length: +5"),
    "two spaces in the request line": _req(first=b"GET  http://example.com/ HTTP/1.1"),
    "no Host field (HTTP/1.1)": b"GET http://example.com/ HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "non-token method (G@T)": _req(first=b"G@T http://example.com/ HTTP/1.1"),
    "HTTP/2.0 in the request line": _req(first=b"GET http://example.com/ HTTP/2.0"),
}
SOCKS_TRICKY = {
    "BIND (CMD 2) instead of CONNECT": GREETING + b"\x05\x02\x00\x01\x8c\x52\x70\x06\x01\xbb",
    "unknown address type 2": GREETING + b"\x05\x01\x00\x02\x8c\x52\x70\x06\x01\xbb",
    "domain length 20, 14 bytes sent": GREETING + b"\x05\x01\x00\x03\x14api.github.com\x01\xbb",
    "empty domain": GREETING + b"\x05\x01\x00\x03\x00\x01\xbb",
    "domain not ASCII (\\xff)": GREETING + b"\x05\x01\x00\x03\x01\xff\x01\xbb",
    "IPv4 with a stray byte after the port": GREETING + b"\x05\x01\x00\x01\x8c\x52\x70\x06\x01\xbb\x00",
    "no 'no authentication' method offered": b"\x05\x01\x02" + b"\x05\x01\x00\x01\x8c\x52\x70\x06\x01\xbb",
}


def verdict(parse: Callable[[bytes], Any], data: bytes) -> str:
    try:
        got = parse(data)
    except Exception as exc:  # noqa: BLE001 - every refusal is a result here
        why = getattr(exc, "status", None)
        return f"reject ({(why + ': ') if why else ''}{str(exc)[:60]})"
    if isinstance(got, h11.Request):
        return f"accept ({got.method.decode()} {got.target[:24].decode('latin-1')})"
    return f"accept {got!r:.60}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=0.4, help="per case, run and parser")
    args = parser.parse_args()
    print(f"h11 {h11.__version__}; load average {os.getloadavg()[0]:.2f} (1 min)\n")
    print("µs per parse, median of 3 runs (each run in brackets)\n")
    print("| input | ours | library | library / ours |")
    print("|---|---:|---:|---:|")
    for row in timing("HTTP", HTTP_CASES, ours_http, h11_http, "h11", args.seconds):
        print(row)
    for row in timing("SOCKS5", SOCKS_CASES, ours_socks, socksio_socks, "socksio", args.seconds):
        print(row)
    for row in timing("SOCKS5, socksio's address cache emptied each parse", SOCKS_CASES, ours_socks, socksio_cold,
                      "socksio", args.seconds):
        print(row)
    print(f"\nload average after timing {os.getloadavg()[0]:.2f} (1 min)\n")
    print("| tricky HTTP head | ours | h11 |")
    print("|---|---|---|")
    for case, data in HTTP_TRICKY.items():
        print(f"| {case} | {verdict(ours_http, data)} | {verdict(h11_http, data)} |".replace("\r", "\\r"))
    print("\n| tricky SOCKS5 message | ours | socksio (reply parser as stand-in) |")
    print("|---|---|---|")
    for case, data in SOCKS_TRICKY.items():
        print(f"| {case} | {verdict(ours_socks, data)} | {verdict(socksio_socks, data)} |")


if __name__ == "__main__":
    main()
