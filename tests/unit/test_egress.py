"""The egress proxy and its address rule: the table, then the proxy spoken to over its socket.

Upstreams are loopback servers this test starts. Nothing opens loopback, so the proxy is
built with a `connect` that routes one private address (PRIVATE) to them (the proxy_for fixture,
tests/unit/conftest.py): each test names PRIVATE in allow_hosts (an IP literal: the one way a
private address opens)."""
from __future__ import annotations

import ipaddress
import socket
import socketserver
import struct
import tempfile
import threading
from pathlib import Path

import pytest

from tests.support import PRIVATE, Recorder, dial, read_response
from workers.sandbox import addresses
from workers.sandbox.egress import host_allowed, opened


REFUSED = {
    "127.0.0.1": "loopback", "127.255.0.9": "loopback", "::1": "loopback",
    "0.0.0.0": "unspecified", "::": "unspecified", "0.1.2.3": "unspecified",
    "169.254.169.254": "link-local (cloud metadata)", "169.254.0.1": "link-local (cloud metadata)",
    "fe80::1": "link-local (cloud metadata)", "fd00:ec2::254": "link-local (cloud metadata)",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "10.0.0.1": "private", "172.16.0.1": "private", "172.31.255.255": "private", "192.168.1.1": "private",
    "100.64.0.1": "private (carrier-grade NAT)", "100.127.255.255": "private (carrier-grade NAT)",
    "fc00::1": "private", "fd12:3456::1": "private",
    "::ffff:127.0.0.1": "loopback", "::ffff:169.254.169.254": "link-local (cloud metadata)",
    "::ffff:10.1.2.3": "private", "::127.0.0.1": "loopback", "64:ff9b::10.0.0.1": "private",
    "2002:a00:1::": "private",  # 6to4 of 10.0.0.1
    "255.255.255.255": "broadcast", "240.0.0.1": "reserved",
    # every IPv6 form that carries an IPv4 address is judged by that address
    "::ffff:7f00:1": "loopback", "::ffff:a9fe:a9fe": "link-local (cloud metadata)",  # IPv4-mapped, hex spelling
    "::ffff:0:127.0.0.1": "loopback", "::ffff:0:10.0.0.1": "private",  # IPv4-translated (SIIT)
    "::169.254.169.254": "link-local (cloud metadata)", "::10.0.0.1": "private", "::2": "unspecified",  # compatible
    "64:ff9b::127.0.0.1": "loopback", "64:ff9b::169.254.169.254": "link-local (cloud metadata)",  # NAT64
    "64:ff9b:1::7f00:1": "loopback", "64:ff9b:1::808:808": "private (local NAT64)",  # local-use NAT64
    "2002:7f00:1::": "loopback", "2002:a9fe:a9fe::1": "link-local (cloud metadata)",  # 6to4
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "loopback",  # Teredo, client 127.0.0.1 (XOR-ed)
    "2001:0:4136:e378:8000:63bf:f5ff:fffe": "private",  # Teredo, client 10.0.0.1
    "2001:0:7f00:1:8000:63bf:3fff:fdd2": "loopback",  # Teredo, server 127.0.0.1
    "2001:db8::5efe:a9fe:a9fe": "link-local (cloud metadata)", "2001:db8::200:5efe:7f00:1": "loopback",  # ISATAP
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "140.82.112.3", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111",
          "::ffff:8.8.8.8", "2a00:1450:4001::1", "::ffff:0:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::",
          "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2606:4700::5efe:808:808"]
LITERALS = {"2130706433": "127.0.0.1", "0x7f000001": "127.0.0.1", "0177.0.0.1": "127.0.0.1", "127.1": "127.0.0.1",
            "0x7f.1": "127.0.0.1", "[::1]": "::1", "[::ffff:127.0.0.1]": "::ffff:127.0.0.1", "3232235777": "192.168.1.1",
            "0xa9.254.169.254": "169.254.169.254", "fe80::1%eth0": "fe80::1", "127.0.0.1.": "127.0.0.1"}


@pytest.mark.parametrize("text,why", sorted(REFUSED.items()))
def test_the_address_rule_refuses(text, why):
    assert addresses.refusal(ipaddress.ip_address(text)) == why


@pytest.mark.parametrize("text", PUBLIC)
def test_the_address_rule_lets_public_addresses_through(text):
    assert addresses.refusal(ipaddress.ip_address(text)) is None


def test_the_hosts_own_addresses_are_refused_whatever_their_range():
    own = {ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7")}
    assert addresses.refusal(ipaddress.ip_address("203.0.113.7"), own) == "one of this host's own addresses"
    assert addresses.refusal(ipaddress.ip_address("::ffff:203.0.113.7"), own) == "one of this host's own addresses"
    assert addresses.refusal(ipaddress.ip_address("2001:db8::7"), own) == "one of this host's own addresses"
    assert addresses.refusal(ipaddress.ip_address("203.0.113.8"), own) is None


@pytest.mark.parametrize("text,address", sorted(LITERALS.items()))
def test_odd_ip_literals_are_read_as_the_addresses_libc_would_dial(text, address):
    assert addresses.parse_ip(text) == ipaddress.ip_address(address)
    assert addresses.refusal(addresses.parse_ip(text)) is not None


def test_names_are_not_literals():
    for name in ("example.com", "deadbeef.example", "localhost", "1.2.3.4.example", ""):
        assert addresses.parse_ip(name) is None


def test_allow_host_patterns():
    allow = ["api.github.com", "*.pypi.org", "files.example.com:8443", "127.0.0.1:9000", "[::1]:9001"]
    assert host_allowed("API.GitHub.com", 443, allow)
    assert host_allowed("files.pypi.org", 443, allow) and not host_allowed("pypi.org", 443, allow)
    assert not host_allowed("evilpypi.org", 443, allow)
    assert host_allowed("files.example.com", 8443, allow) and not host_allowed("files.example.com", 443, allow)
    assert not host_allowed("github.com", 443, allow)
    assert host_allowed("2130706433", 9000, allow) and not host_allowed("127.0.0.1", 9001, allow)
    assert host_allowed("::1", 9001, allow)
    assert opened(9000, allow + ["10.0.0.0/8", "*.internal"]) == [ipaddress.ip_network("127.0.0.1/32"),
                                                                   ipaddress.ip_network("10.0.0.0/8")]


# -- the proxy over its unix socket (tests/unit/conftest.py: proxy_for, upstream)

def test_every_request_on_a_kept_alive_connection_is_rewritten_and_checked(proxy_for, upstream):
    proxy, lines = proxy_for("full", [f"{PRIVATE}:{upstream}"])
    s = dial(proxy)
    f = s.makefile("rb")
    for path in ("/one", "/two?x=1"):
        s.sendall(f"GET http://{PRIVATE}:{upstream}{path} HTTP/1.1\r\nHost: {PRIVATE}:{upstream}\r\n"
                  "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n\r\n".encode())
        assert read_response(f) == ("HTTP/1.1 200 OK", f"GET {path} ".encode())
    s.sendall(f"POST http://{PRIVATE}:{upstream}/three HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello".encode())
    assert read_response(f) == ("HTTP/1.1 200 OK", b"POST /three hello")
    s.sendall(f"POST http://{PRIVATE}:{upstream}/four HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".encode())
    assert read_response(f) == ("HTTP/1.1 200 OK", b"POST /four abcde")
    # the same connection, now to a host the routine does not name: refused, never forwarded
    s.sendall(f"GET http://127.0.0.1:{upstream + 1 if upstream < 65535 else 1}/five HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    status, body = read_response(f)
    assert status == "HTTP/1.1 403 Forbidden" and b"is loopback" in body
    s.close()
    assert [seen[0] for seen in Recorder.seen] == ["GET /one HTTP/1.1", "GET /two?x=1 HTTP/1.1", "POST /three HTTP/1.1",
                                                   "POST /four HTTP/1.1"]
    assert len({seen[3] for seen in Recorder.seen}) == 1  # one upstream connection, kept alive
    for _, headers, _, _ in Recorder.seen:
        assert not any(h.lower().startswith("proxy-") for h in headers)
    assert lines == [f"routinely: egress refused: 127.0.0.1:{upstream + 1 if upstream < 65535 else 1}: 127.0.0.1 is loopback "
                     "(no allow_hosts entry opens it)"]


def test_allowlist_refuses_what_it_does_not_list_even_in_the_middle_of_a_connection(proxy_for, upstream):
    proxy, lines = proxy_for("allowlist", [f"{PRIVATE}:{upstream}"])
    s = dial(proxy)
    f = s.makefile("rb")
    s.sendall(f"GET http://{PRIVATE}:{upstream}/ok HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert read_response(f)[0] == "HTTP/1.1 200 OK"
    s.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert read_response(f)[0] == "HTTP/1.1 403 Forbidden"
    assert lines == ["routinely: egress refused: example.com:80 is not in this routine's allow_hosts"]
    assert len(Recorder.seen) == 1


def test_connect_and_socks5_reach_only_what_the_rule_allows(proxy_for, upstream):
    proxy, lines = proxy_for("full", [f"{PRIVATE}:{upstream}"])
    s = dial(proxy)
    s.sendall(f"CONNECT {PRIVATE}:{upstream} HTTP/1.1\r\n\r\nGET /tunnel HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    f = s.makefile("rb")
    assert read_response(f) == ("HTTP/1.1 200 Connection Established", b"")
    assert read_response(f) == ("HTTP/1.1 200 OK", b"GET /tunnel ")
    s.close()

    def socks(kind: int, address: bytes, port: int) -> socket.socket:
        c = dial(proxy)
        c.sendall(b"\x05\x01\x00")
        assert c.recv(2) == b"\x05\x00"
        c.sendall(b"\x05\x01\x00" + bytes([kind]) + address + struct.pack("!H", port))
        return c

    c = socks(1, socket.inet_aton(PRIVATE), upstream)
    assert c.recv(10)[:2] == b"\x05\x00"
    c.sendall(b"GET /socks HTTP/1.1\r\nHost: h\r\n\r\n")
    assert read_response(c.makefile("rb")) == ("HTTP/1.1 200 OK", b"GET /socks ")
    for kind, address in ((3, b"\x09localhost"), (4, socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")),
                          (1, socket.inet_aton("169.254.169.254"))):
        c = socks(kind, address, upstream + 1)
        assert c.recv(10)[:2] == b"\x05\x02"  # not allowed by ruleset
    assert len(lines) == 3 and all(line.startswith("routinely: egress refused: ") for line in lines)
    assert "169.254.169.254 is link-local (cloud metadata)" in lines[2]


def test_a_name_is_resolved_once_and_the_answer_is_what_is_checked(proxy_for, upstream, monkeypatch):
    proxy, lines = proxy_for("full", [])
    answers = []
    real = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):
        if host == "rebind.test":
            answers.append(host)
            return real("127.0.0.1", *args, **kwargs)  # a public name whose answer turned to loopback
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    s = dial(proxy)
    s.sendall(f"GET http://rebind.test:{upstream}/ HTTP/1.1\r\nHost: rebind.test\r\n\r\n".encode())
    assert read_response(s.makefile("rb"))[0] == "HTTP/1.1 403 Forbidden"
    assert answers == ["rebind.test"] and Recorder.seen == []
    assert lines == [f"routinely: egress refused: rebind.test:{upstream}: 127.0.0.1 is loopback (no allow_hosts entry opens it)"]


def test_requests_for_the_sessions_other_doors_go_to_their_sockets(proxy_for, tmp_path):
    door = Path(tempfile.mkdtemp(prefix="rly-door-")) / "gateway.sock"

    class Door(socketserver.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndoor")

    server = socketserver.ThreadingUnixStreamServer(str(door), Door)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    proxy, lines = proxy_for("allowlist", ["example.com"], {31337: str(door)})
    s = dial(proxy)
    s.sendall(b"GET http://127.0.0.1:31337/v1/messages HTTP/1.1\r\nHost: 127.0.0.1:31337\r\n\r\n")
    assert read_response(s.makefile("rb")) == ("HTTP/1.1 200 OK", b"door")
    assert lines == []
    server.shutdown()
    server.server_close()
