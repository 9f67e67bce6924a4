"""The web worker (app/keepalive_worker.py) under a real gunicorn, spoken to over raw sockets:
kept-alive and pipelined requests, HTTP/1.0 and `Connection: close`, 100-continue, bad and
oversized heads, the environ it builds, idle connections closed, a failing app, and a
graceful stop. The webhook door's own framing cases (chunked, short, 413) are in test_door."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.support import ADMIN_TOKEN, SECRET, gunicorn

ROOT = Path(__file__).resolve().parent.parent
KEEPALIVE = 2


def start(tmp: Path, redis_url: str, workers: int = 2) -> tuple[subprocess.Popen, int]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "REDIS_URL": redis_url, "ROUTINELY_DATA_DIR": str(tmp),
           "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_ADMIN_TOKEN": ADMIN_TOKEN}
    return gunicorn("tests.echo_app:app", env, "--keep-alive", str(KEEPALIVE), workers=workers)


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    proc, port = start(tmp_path_factory.mktemp("web"), redis_server.url)
    yield port
    proc.terminate()
    proc.wait(10)


class Client:
    """One TCP connection; `read()` takes one response off it (head, headers, body)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed before a response")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                break
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def request(method: str, path: str, body: bytes = b"", version: str = "1.1", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: t"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_requests_on_one_connection_are_answered_in_turn_and_it_stays_open(server):
    c = Client(server)
    try:
        for i in range(3):
            c.send(request("POST", f"/n/{i}", b'{"i": %d}' % i, Content_Type="application/json"))
            status, headers, body = c.read()
            seen = orjson.loads(body)
            assert status == 200 and headers["connection"] == "keep-alive"
            assert seen["PATH_INFO"] == f"/n/{i}" and seen["body"] == '{"i": %d}' % i
        c.send(request("POST", "/a", b"1") + request("POST", "/b", b"22"))  # pipelined: one write, two answers
        first, second = orjson.loads(c.read()[2]), orjson.loads(c.read()[2])
        assert (first["PATH_INFO"], first["body"]) == ("/a", "1") and (second["PATH_INFO"], second["body"]) == ("/b", "22")
    finally:
        c.close()


def test_http_1_0_and_connection_close_are_answered_then_closed(server):
    for raw in (request("GET", "/x", version="1.0"), request("GET", "/x", Connection="close")):
        c = Client(server)
        c.send(raw)
        status, headers, _ = c.read()
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server()
        c.close()


def test_the_environ_is_what_pep_3333_says(server):
    c = Client(server)
    c.send(request("POST", "/a%20b/%C3%A9?x=1&y=%20", b"hi", Content_Type="text/plain",
                   X_Twice="one") .replace(b"\r\n\r\n", b"\r\nX-Twice: two\r\nX_Spoofed: yes\r\n\r\n", 1))
    status, _, body = c.read()
    seen = orjson.loads(body)
    c.close()
    assert status == 200
    assert seen["PATH_INFO"] == "/a b/\u00c3\u00a9"  # unquoted, as latin-1 (PEP 3333)
    assert seen["QUERY_STRING"] == "x=1&y=%20" and seen["REQUEST_METHOD"] == "POST"
    assert seen["CONTENT_TYPE"] == "text/plain" and seen["CONTENT_LENGTH"] == "2" and seen["body"] == "hi"
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1" and seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["headers"]["HTTP_X_TWICE"] == "one,two"
    assert "HTTP_X_SPOOFED" not in seen["headers"]  # a name with `_` would pose as one with `-`: dropped


def test_a_chunked_body_reaches_the_app_whole(server):
    c = Client(server)
    c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    status, _, body = c.read()
    c.close()
    assert status == 200 and orjson.loads(body)["body"] == "abcde"


def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_sent(server):
    c = Client(server)
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = c.read()
    assert status == 100
    c.send(b"hello")
    status, _, body = c.read()
    c.close()
    assert status == 200 and orjson.loads(body)["body"] == "hello"


def test_bad_heads_get_one_line_and_the_connection_closes(server):
    cases = [(b"NOT HTTP AT ALL\r\n\r\n", 400),
             (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n", 431),
             (b"GET /" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: t\r\n\r\n", 431),
             (b"GET http://h:99999/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),  # llhttp takes it; the URL split does not
             (b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400)]
    for raw, expected in cases:
        c = Client(server)
        c.send(raw)
        status, headers, body = c.read()
        assert status == expected and headers["connection"] == "close" and orjson.loads(body)["error"], raw[:60]
        assert c.closed_by_server()
        c.close()
    ok = Client(server)  # the worker lived through all of it
    ok.send(request("GET", "/still"))
    assert ok.read()[0] == 200
    ok.close()


def test_a_head_that_never_ends_is_refused_before_it_fills_memory(server):
    c = Client(server)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ")
    try:
        for _ in range(64):  # 4 MB of one header value, no line end
            c.send(b"a" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        status = c.read()[0]
    except (ConnectionError, OSError):
        status = None  # reset while we were still sending: refused all the same
    assert status in (431, None) and c.closed_by_server()
    c.close()


def test_an_upgrade_is_answered_as_plain_http_and_closed(server):
    c = Client(server)
    c.send(b"GET /u HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    status, headers, body = c.read()
    assert status == 200 and orjson.loads(body)["PATH_INFO"] == "/u" and headers["connection"] == "close"
    assert c.closed_by_server()
    c.close()


def test_answers_before_a_bad_request_are_still_sent(server):
    c = Client(server)
    c.send(request("GET", "/first") + b"BROKEN\r\n\r\n")
    first = c.read()
    assert first[0] == 200 and orjson.loads(first[2])["PATH_INFO"] == "/first"
    assert c.read()[0] == 400 and c.closed_by_server()
    c.close()


def test_trailers_never_reach_the_environ(server):
    c = Client(server)
    c.send(b"POST /t HTTP/1.1\r\nHost: good\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
    status, _, body = c.read()
    c.close()
    seen = orjson.loads(body)
    assert status == 200 and seen["body"] == "hi" and seen["headers"]["HTTP_HOST"] == "good"
    assert "HTTP_X_FORWARDED_FOR" not in seen["headers"]


def test_a_chunked_body_cut_short_is_400_and_never_reaches_the_app(server):
    c = Client(server)
    c.send(b"POST /cut HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhellowor")
    c.sock.shutdown(socket.SHUT_WR)
    status, _, body = c.read()
    c.close()
    assert status == 400 and "chunk" in orjson.loads(body)["error"]


def test_a_client_that_reads_nothing_stalls_nobody(redis_server, tmp_path):
    """Thousands of pipelined requests from a client that never reads: its answers wait in
    its own buffer while another client of the same (only) worker is served (a send that
    blocked would hold the loop for 30 s: the clients' 10 s timeout would fail the test)."""
    proc, port = start(tmp_path, redis_server.url, workers=1)
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        slow.sendall(request("GET", "/p" + "x" * 200) * 2000)
    except OSError:
        pass
    try:
        for _ in range(5):
            c = Client(port)
            c.send(request("GET", "/other"))
            assert c.read()[0] == 200
            c.close()
    finally:
        slow.close()
        proc.terminate()
        proc.wait(10)


def test_a_failing_app_is_a_500_and_the_next_request_is_served(server):
    c = Client(server)
    c.send(request("GET", "/boom"))
    status, _, body = c.read()
    assert status == 500 and b"Traceback" not in body
    c.send(request("GET", "/after"))
    status, _, body = c.read()
    c.close()
    assert status == 200 and orjson.loads(body)["PATH_INFO"] == "/after"


def test_a_response_without_content_length_gets_one(server):
    c = Client(server)
    c.send(request("GET", "/no-length"))
    status, headers, body = c.read()
    c.close()
    assert status == 200 and headers["content-length"] == "6" and body == b"abcdef"


def test_an_idle_connection_is_closed_after_keepalive_seconds(server):
    c = Client(server)
    c.send(request("GET", "/x"))
    assert c.read()[0] == 200
    t0 = time.monotonic()
    c.sock.settimeout(KEEPALIVE + 5)
    assert c.closed_by_server()
    c.close()
    assert time.monotonic() - t0 >= KEEPALIVE - 0.5


def test_sigterm_with_open_connections_stops_at_once(redis_server, tmp_path):
    proc, port = start(tmp_path, redis_server.url, workers=1)
    clients = [Client(port) for _ in range(3)]
    clients[0].send(request("GET", "/x"))
    assert clients[0].read()[0] == 200
    clients[1].send(b"POST /half HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")  # mid-request
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 5
    for c in clients:
        assert c.closed_by_server()
        c.close()
