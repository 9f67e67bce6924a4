"""The egress proxy as a door: which addresses no allow_hosts entry opens, and what one
session's connections may cost the worker.

The proxy runs in this process, so this process is the worker here: its `Threads:`, `VmRSS:`
and peak `VmHWM:` (reset through /proc/self/clear_refs) in /proc/self/status are the figures
a session could grow. Upstreams are loopback servers this test starts, reached through the
private address PRIVATE (see tests/unit/test_egress.py: nothing opens loopback itself)."""
from __future__ import annotations

import ipaddress
import select
import socket
import socketserver
import struct
import threading

import pytest

from tests.support import PRIVATE, Recorder, dial, proc_status, read_response, reset_peak, wait_for
from workers.sandbox import addresses
from workers.sandbox.egress import Caps, entry_problem


OWN = ipaddress.ip_address("203.0.113.7")  # stands for one of the host's own addresses
MB = 1024 * 1024


def get(proxy, url: str) -> tuple[str, bytes]:
    s = dial(proxy)
    host = url.split("/")[2]
    s.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    with s, s.makefile("rb") as f:
        return read_response(f)


@pytest.fixture
def named(monkeypatch):
    """Names that resolve where a test says (a hostile resolver), everything else as usual."""
    answers: dict[str, str] = {}
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        return real(answers[host], *args, **kwargs) if host in answers else real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return answers


# -- the address rule and allow_hosts

NEVER = {"127.0.0.1": "loopback", "169.254.169.254": "link-local (cloud metadata)", str(OWN): "one of this host's own addresses"}


@pytest.mark.parametrize("network", ["allowlist", "full"])
@pytest.mark.parametrize("answer,why", sorted({**NEVER, PRIVATE: "private"}.items()))
def test_a_named_allow_hosts_entry_opens_nothing_its_name_resolves_to(proxy_for, upstream, named, network, answer, why):
    named["db.example"] = answer
    proxy, lines = proxy_for(network, [f"db.example:{upstream}"], own={OWN})
    status_line, body = get(proxy, f"http://db.example:{upstream}/")
    assert status_line == "HTTP/1.1 403 Forbidden" and f"{answer} is {why}".encode() in body
    hint = "no allow_hosts entry opens it" if why != "private" else \
        "only an allow_hosts entry that is its IP address or a CIDR around it opens a private address"
    assert lines == [f"routinely: egress refused: db.example:{upstream}: {answer} is {why} ({hint})"]
    assert Recorder.seen == []


def test_the_hosts_real_addresses_are_refused_by_name_and_by_literal(proxy_for, upstream, named):
    mine = sorted(str(a) for a in addresses.host_addresses() if a.version == 4 and not a.is_loopback)
    if not mine:
        pytest.skip("this host has no IPv4 address beside loopback")
    named["me.example"] = mine[0]
    proxy, lines = proxy_for("full", [f"me.example:{upstream}", f"{mine[0]}:{upstream}", f"{mine[0]}/32"])  # own read here
    for url in (f"http://me.example:{upstream}/", f"http://{mine[0]}:{upstream}/"):
        assert get(proxy, url)[0] == "HTTP/1.1 403 Forbidden"
    assert all(f"{mine[0]} is one of this host's own addresses (no allow_hosts entry opens it)" in line for line in lines)
    assert len(lines) == 2


@pytest.mark.parametrize("target", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "169.254.169.254",
                                    "[64:ff9b::a9fe:a9fe]", "[2002:7f00:1::]", str(OWN)])
def test_no_ip_literal_or_cidr_entry_opens_loopback_metadata_or_the_hosts_own(proxy_for, upstream, target):
    allow = [f"{target}:{upstream}", "0.0.0.0/0", "[::/0]", f"{OWN}", "127.0.0.0/8", "169.254.0.0/16"]
    proxy, lines = proxy_for("full", allow, own={OWN})
    status_line, body = get(proxy, f"http://{target}:{upstream}/")
    assert status_line == "HTTP/1.1 403 Forbidden" and b"(no allow_hosts entry opens it)" in body
    assert len(lines) == 1 and Recorder.seen == []


@pytest.mark.parametrize("entry", [PRIVATE, f"{PRIVATE}:{{port}}", "10.99.0.0/16", "10.99.0.0/16:{port}", "10.99.0.0/24"])
def test_an_ip_literal_or_cidr_entry_opens_its_private_range(proxy_for, upstream, entry):
    proxy, lines = proxy_for("allowlist", [entry.format(port=upstream)])
    assert get(proxy, f"http://{PRIVATE}:{upstream}/in") == ("HTTP/1.1 200 OK", b"GET /in ")
    status_line, _ = get(proxy, f"http://10.100.0.1:{upstream}/out")  # outside the range (or the policy)
    assert status_line == "HTTP/1.1 403 Forbidden" and [seen[0] for seen in Recorder.seen] == ["GET /in HTTP/1.1"]
    assert len(lines) == 1


def test_an_opened_range_opens_no_other_port_and_no_name(proxy_for, upstream, named):
    named["db.example"] = PRIVATE
    proxy, lines = proxy_for("full", [f"{PRIVATE}:{upstream}", f"db.example:{upstream + 1}"])
    assert get(proxy, f"http://{PRIVATE}:{upstream + 1}/")[0] == "HTTP/1.1 403 Forbidden"
    assert get(proxy, f"http://db.example:{upstream + 1}/")[0] == "HTTP/1.1 403 Forbidden"
    assert get(proxy, f"http://db.example:{upstream}/")[0] == "HTTP/1.1 200 OK"  # the address is opened, whatever name
    assert len(lines) == 2 and all("is private" in line for line in lines)


@pytest.mark.parametrize("text,opened,why", [
    ("10.99.0.1", ["10.99.0.0/16"], None),
    ("::ffff:10.99.0.1", ["10.99.0.0/16"], None),  # the mapped form of an opened address
    ("10.99.0.2", ["10.99.0.1/32"], "private"),
    ("fd12::1", ["fd12::/16"], None),
    ("fd12::1", ["10.0.0.0/8"], "private"),
    ("127.0.0.1", ["0.0.0.0/0"], "loopback"),
    ("::1", ["::/0"], "loopback"),
    ("64:ff9b::127.0.0.1", ["::/0", "0.0.0.0/0"], "loopback"),
    ("2002:a9fe:a9fe::", ["::/0", "0.0.0.0/0"], "link-local (cloud metadata)"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", ["::/0", "0.0.0.0/0"], "loopback"),  # Teredo client 127.0.0.1
    ("64:ff9b::10.99.0.1", ["10.99.0.0/16"], None),
    ("10.99.0.1", ["10.99.0.0/16"], "one of this host's own addresses"),  # own, though private and opened
    ("::ffff:203.0.113.7", ["::/0", "0.0.0.0/0"], "one of this host's own addresses"),
])
def test_what_an_opened_network_opens(text, opened, why):
    own = {OWN} | ({ipaddress.ip_address("10.99.0.1")} if why == "one of this host's own addresses" else set())
    address = ipaddress.ip_address(text)
    assert addresses.refusal(address, own, [ipaddress.ip_network(n) for n in opened]) == why


@pytest.mark.parametrize("entry,ok", [
    ("api.github.com", True), ("*.pypi.org:443", True), ("10.0.0.5:5432", True), ("10.0.0.0/8", True),
    ("10.0.0.0/8:5432", True), ("[fd00::/8]:443", True), ("fd00::1", True), ("[::1]:80", True),
    ("10.0.0.0/33", False), ("host:99999", False), ("host:0", False), ("ex ample.com", False), ("http://x", False),
])
def test_allow_hosts_entries_the_proxy_understands(entry, ok):
    assert (entry_problem(entry) is None) is ok, entry_problem(entry)


# -- what one session may cost the worker

def test_connections_past_the_cap_are_refused_with_one_log_line_and_cost_no_thread(proxy_for):
    proxy, lines = proxy_for("full", [])
    cap = proxy.caps.connections
    threads, rss = proc_status("Threads"), proc_status("VmRSS")
    clients = [dial(proxy) for _ in range(2000)]
    poller = select.poll()
    for c in clients:
        poller.register(c, select.POLLIN)
    # the ones past the cap are answered and closed at once; the first `cap` wait, idle
    assert wait_for(lambda: len(poller.poll(0)) == 2000 - cap), len(poller.poll(0))
    assert proxy.open_connections == cap
    grown_threads, grown_kb = proc_status("Threads") - threads, proc_status("VmRSS") - rss
    print(f"2000 idle connections: +{grown_threads} threads, +{grown_kb} kB RSS")
    assert grown_threads <= cap
    assert grown_kb < 24 * 1024
    turned_away = next(c for c in clients if c.fileno() in dict(poller.poll(0)))
    assert turned_away.recv(200).startswith(b"HTTP/1.1 503 Service Unavailable")
    assert lines == [f"routinely: egress refused: this session has {cap} connections open through the proxy, "
                     "the most it may; more are refused until some close"]
    for c in clients:
        c.close()
    assert wait_for(lambda: proxy.open_connections == 0 and proc_status("Threads") <= threads)
    assert get(proxy, "http://127.0.0.1:1/")[0] == "HTTP/1.1 403 Forbidden"  # slots are given back: served again


def test_idle_and_slow_connections_give_their_slots_back(proxy_for):
    proxy, lines = proxy_for("full", [], caps=Caps(connections=2, idle=0.2, head=0.3))
    idle, slow = dial(proxy), dial(proxy)
    slow.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: exa")  # and never the rest
    assert idle.recv(100) == b""  # closed, nothing said
    assert slow.recv(200).startswith(b"HTTP/1.1 408 Request Timeout")
    assert wait_for(lambda: proxy.open_connections == 0)
    idle.close()
    slow.close()
    assert lines == []


def send_until_refused(sock: socket.socket, pieces) -> int:
    """Sends the pieces until the other side stops taking them (closed, or full for the
    socket's timeout); returns how many bytes went."""
    sent = 0
    try:
        for piece in pieces:
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass
    return sent


@pytest.mark.parametrize("head,what", [
    (b"GET http://example.com/" + b"a" * MB, b"a line of the head is over 16 KiB"),
    (b"GET http://example.com/ HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
     b"the head has over 128 fields"),
    (b"GET http://example.com/ HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100)) + b"\r\n",
     b"the head is over 64 KiB"),
])
def test_heads_are_bounded_in_lines_fields_and_bytes(proxy_for, head, what):
    proxy, lines = proxy_for("full", [])
    rss = reset_peak()
    s = dial(proxy)
    sent = send_until_refused(s, (head[i:i + 65536] for i in range(0, len(head), 65536)))
    status_line, body = read_response(s.makefile("rb"))
    s.close()
    assert status_line == "HTTP/1.1 431 Request Header Fields Too Large" and what in body
    peak_kb = proc_status("VmHWM") - rss
    print(f"head of {len(head)} bytes ({sent} sent): peak +{peak_kb} kB")
    assert peak_kb < 8 * 1024 + len(head) // 1024  # the test's own copy of the head, and little more
    assert lines == []


class Drain(socketserver.StreamRequestHandler):
    """Reads one chunked upload a MB at a time and answers how many bytes it carried."""

    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        carried = 0
        while size := int(self.rfile.readline().split(b";")[0], 16):
            while size:
                got = len(self.rfile.read(min(size, MB)))
                carried, size = carried + got, size - got
            self.rfile.readline()
        self.rfile.readline()
        answer = str(carried).encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def serve():
    servers = []

    def start(handler) -> int:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_chunked_upload_moves_in_bounded_pieces(proxy_for, serve):
    port = serve(Drain)
    proxy, _ = proxy_for("full", [f"{PRIVATE}:{port}"])
    block, chunk, chunks = b"x" * MB, 80 * MB, 4
    s = dial(proxy)
    s.settimeout(120)
    rss = reset_peak()
    s.sendall(f"POST http://{PRIVATE}:{port}/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    for _ in range(chunks):
        s.sendall(b"%x\r\n" % chunk)
        for _ in range(chunk // MB):
            s.sendall(block)
        s.sendall(b"\r\n")
    s.sendall(b"0\r\n\r\n")
    assert read_response(s.makefile("rb")) == ("HTTP/1.1 200 OK", str(chunks * chunk).encode())
    s.close()
    peak_kb = proc_status("VmHWM") - rss
    print(f"4 x 80 MB chunks through the proxy: peak +{peak_kb} kB")
    assert peak_kb < 64 * 1024


def open_tunnel(proxy, how: str, port: int) -> socket.socket:
    s = dial(proxy)
    s.settimeout(60)
    if how == "connect":
        s.sendall(f"CONNECT {PRIVATE}:{port} HTTP/1.1\r\nHost: {PRIVATE}:{port}\r\n\r\n".encode())
        assert s.recv(39) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    else:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(PRIVATE) + struct.pack("!H", port))
        assert s.recv(10)[:2] == b"\x05\x00"
    return s


@pytest.mark.parametrize("how", ["connect", "socks"])
def test_a_tunnel_relays_both_ways_at_once_with_bounded_buffers(proxy_for, serve, how):
    port = serve(Echo)
    proxy, _ = proxy_for("full", [f"{PRIVATE}:{port}"])
    s = open_tunnel(proxy, how, port)
    total, block = 64 * MB, b"y" * MB
    rss = reset_peak()

    def send():
        for _ in range(total // MB):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)  # the end is passed on: the echo ends, and so does the tunnel

    sender = threading.Thread(target=send)
    sender.start()
    received = 0
    while data := s.recv(MB):
        received += len(data)
    sender.join()
    s.close()
    peak_kb = proc_status("VmHWM") - rss
    print(f"{how} tunnel, 64 MB each way at once: peak +{peak_kb} kB")
    assert received == total
    assert peak_kb < 16 * 1024
    assert wait_for(lambda: proxy.open_connections == 0)


class Deaf(socketserver.BaseRequestHandler):
    """Accepts and never reads: whatever a tunnel sends it must wait, not pile up in the worker."""

    release = threading.Event()

    def handle(self):
        type(self).release.wait(60)


def test_a_tunnel_to_a_side_that_does_not_read_holds_no_more_than_a_piece(proxy_for, serve):
    Deaf.release = threading.Event()
    port = serve(Deaf)
    proxy, _ = proxy_for("full", [f"{PRIVATE}:{port}"])
    s = open_tunnel(proxy, "connect", port)
    rss = reset_peak()
    s.settimeout(1)  # the pipe is full once a send waits this long
    block = b"z" * MB
    sent = send_until_refused(s, (block for _ in range(256)))
    peak_kb = proc_status("VmHWM") - rss
    print(f"tunnel to a deaf upstream: {sent // MB} MB went before it stalled, peak +{peak_kb} kB")
    assert sent < 64 * MB and peak_kb < 16 * 1024
    Deaf.release.set()
    s.close()


def test_a_request_with_two_framings_reaches_the_upstream_with_one(proxy_for, upstream):
    """Content-Length beside chunked is how requests are smuggled past a proxy: chunked wins and
    Content-Length is not forwarded, so the upstream cannot read the body differently."""
    proxy, _ = proxy_for("full", [f"{PRIVATE}:{upstream}"])
    s = dial(proxy)
    s.sendall(f"POST http://{PRIVATE}:{upstream}/two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
              "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode())
    assert read_response(s.makefile("rb")) == ("HTTP/1.1 200 OK", b"POST /two hello")
    s.sendall(f"POST http://{PRIVATE}:{upstream}/bad HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\nabcd".encode())
    assert read_response(s.makefile("rb"))[0] == "HTTP/1.1 400 Bad Request"
    s.close()
    assert len(Recorder.seen) == 1 and "Content-Length" not in Recorder.seen[0][1]


@pytest.mark.parametrize("field", ["X-A: 1\rX-Smuggled: 2", "X-A: 1\0", "X-A: 1\nX-Smuggled: 2"])
def test_a_head_with_a_nul_or_a_bare_cr_or_lf_never_reaches_the_upstream(proxy_for, upstream, field):
    proxy, _ = proxy_for("full", [f"{PRIVATE}:{upstream}"])
    s = dial(proxy)
    s.sendall(f"GET http://{PRIVATE}:{upstream}/x HTTP/1.1\r\nHost: h\r\n{field}\r\n\r\n".encode())
    assert read_response(s.makefile("rb"))[0] == "HTTP/1.1 400 Bad Request"
    s.close()
    assert Recorder.seen == []
