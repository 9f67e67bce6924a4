"""The model gateway and the github connector as doors a hostile session knocks on: a real
gateway on a unix socket with the fake vendor behind it (tests/fake_models.py), a real
connector (uvicorn); what they refuse, and what the session can make the worker hold.
Costs are read host-side, from this process (the worker): /proc/self/status."""
from __future__ import annotations

import asyncio
import http.client
import io
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio.to_thread
import pytest

from routinely.storage import keys
from tests.fake_github import FakeGitHub
from tests.fake_models import USAGE
from workers.connector import server as connector_server
from workers.gateway import server as gateway_server
from workers.gateway.jsonpick import MAX_DEPTH, Picker, splice
from workers.gateway.meter import Budget
from tests.support import ConnectorSession, proc_status


IDLE = 2000


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("gateway", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(self.unix_path)




def proc_figures() -> dict[str, int]:
    """This process's threads and resident memory (kB, now and at its peak)."""
    return {name: proc_status(name) for name in ("Threads", "VmRSS", "VmHWM")}


def door_sockets(path: str) -> int:
    """Connections the kernel holds open on the door's side (accepted sockets bound to `path`)."""
    return sum(1 for line in Path("/proc/net/unix").read_text().splitlines()[1:]
               if line.endswith(" " + path) and line.split()[5] == "03")


def until(condition, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def call(gw, method, target, body=None, headers=None):
    """One request with the session's token; (status, parsed JSON or raw bytes)."""
    conn = UnixHTTP(gw.socket_path)
    data = body if isinstance(body, (bytes, io.BytesIO)) else json.dumps(body).encode() if body is not None else None
    if isinstance(data, io.BytesIO):  # sent as it is read: http.client would join bytes to the head, a copy
        headers = {"content-length": str(data.seek(0, io.SEEK_END)), **(headers or {})}
        data.seek(0)
    conn.request(method, target, body=data, headers={"content-type": "application/json", "x-api-key": gw.token,
                                                      **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def messages(max_tokens=4096, stream=False):
    return {"model": "claude-priced", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}


# -- what is forwarded

REFUSED = {
    "batches": [("POST", "/anthropic/v1/messages/batches"), ("GET", "/anthropic/v1/messages/batches/msgbatch_1/results"),
                ("POST", "/openai/v1/batches"), ("POST", "/gemini/v1beta/models/gemini-2.5-pro:batchGenerateContent")],
    "files": [("POST", "/anthropic/v1/files"), ("GET", "/openai/v1/files/file-1/content"), ("POST", "/gemini/v1beta/files"),
              ("POST", "/gemini/v1beta/cachedContents")],
    "fine-tuning": [("POST", "/openai/v1/fine_tuning/jobs"), ("POST", "/gemini/v1beta/tunedModels")],
    "admin keys": [("GET", "/anthropic/v1/organizations/api_keys"), ("POST", "/anthropic/v1/organizations/invites"),
                   ("GET", "/openai/v1/organization/admin_api_keys")],
    "models list": [("GET", "/anthropic/v1/models"), ("GET", "/openai/v1/models"), ("GET", "/gemini/v1beta/models")],
    "wrong method": [("GET", "/anthropic/v1/messages"), ("PUT", "/openai/v1/responses"), ("DELETE", "/openai/v1/responses"),
                     ("GET", "/gemini/v1beta/models/gemini-2.5-pro:generateContent")],
    "encoded separators": [("POST", "/anthropic/v1/messages%2fbatches"), ("POST", "/anthropic/v1/messages%2Fbatches"),
                           ("POST", "/anthropic/v1%5cmessages"), ("POST", "/anthropic/v1/messages/%2e%2e/files"),
                           ("POST", "/anthropic/v1/%2E/messages"), ("POST", "/anthropic/v1/mess%61ges")],
    "dot segments": [("POST", "/anthropic/v1/files/../messages"), ("POST", "/anthropic/v1/./messages"),
                     ("POST", "/openai/v1/responses/.."), ("POST", "/anthropic/../anthropic/v1/messages")],
    "odd spellings": [("POST", "/anthropic//v1/messages"), ("POST", "//anthropic/v1/messages"),
                      ("POST", "/anthropic/v1/messages/"), ("POST", "/anthropic/v1\\messages"),
                      ("POST", "/azure/v1/messages"), ("POST", "/anthropic")],
}


@pytest.mark.parametrize("kind", REFUSED)
def test_paths_the_meter_cannot_price_are_refused_and_never_reach_the_vendor(conn, open_gateway, fake, kind):
    gw = open_gateway()
    for method, path in REFUSED[kind]:
        status, body = call(gw, method, path + f"?key={gw.token}", messages() if method == "POST" else None)
        assert status == 403, (method, path, body)
        assert body["error"]["type"] == "permission_error" and "refused" in body["error"]["message"]
    assert fake.requests == []
    assert json.loads(conn.hget(keys.session("session_gw1"), "usage"))["requests"] == 0
    # one line per refusal, naming method and path, never the query (it carries the session's token)
    assert len(gw.lines) == len(REFUSED[kind])
    for line, (method, path) in zip(gw.lines, REFUSED[kind]):
        assert line.startswith(f"routinely: the model gateway refused {method} {path}:"), line
        assert gw.token not in line and "key=" not in line


def test_refusals_are_logged_a_bounded_number_of_times_with_bounded_lines(open_gateway, fake):
    gw = open_gateway()
    for i in range(gateway_server.REFUSALS_LOGGED + 10):
        assert call(gw, "POST", "/anthropic/v1/files/" + "x" * 4000 + str(i), {})[0] == 403
    assert len(gw.lines) == gateway_server.REFUSALS_LOGGED and "further refusals are not logged" in gw.lines[-1]
    assert max(len(line) for line in gw.lines) < 400
    assert gw.refused_requests == gateway_server.REFUSALS_LOGGED + 10 and fake.requests == []


class GeminiLike:
    """A vendor answering Gemini's three shapes: JSON, a JSON array (streamGenerateContent),
    SSE (`alt=sse`), each with running usageMetadata totals."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                vendor.paths.append(self.path)
                parts = [{"candidates": [{"content": {"parts": [{"text": "[{]}\\\""}]}}], "modelVersion": "gemini-x",
                          "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": n}} for n in (2, 5)]
                if ":countTokens" in self.path:
                    data, kind = json.dumps({"totalTokens": 11}).encode(), "application/json"
                elif "alt=sse" in self.path:
                    data, kind = b"".join(b"data: %s\r\n\r\n" % json.dumps(p).encode() for p in parts), "text/event-stream"
                elif ":streamGenerateContent" in self.path:
                    data, kind = json.dumps(parts, indent=1).encode(), "application/json"
                else:
                    data, kind = json.dumps(parts[-1]).encode(), "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_model_endpoints_pass_and_are_metered(conn, open_gateway, fake):
    gemini = GeminiLike()
    try:
        gw = open_gateway(gemini_api_url=gemini.url)
        assert call(gw, "POST", "/anthropic/v1/messages?beta=true", messages())[0] == 200
        assert call(gw, "POST", "/anthropic/v1/messages", messages(stream=True))[0] == 200
        assert call(gw, "POST", "/anthropic/v1/messages/count_tokens?beta=true", {"model": "claude-priced", "messages": []}) \
            == (200, {"input_tokens": 10})
        assert call(gw, "POST", "/openai/v1/chat/completions", {"model": "gpt-5", "messages": []})[0] == 200
        assert call(gw, "POST", "/openai/v1/responses", {"model": "gpt-5", "input": "hi"})[0] == 200
        assert [r.path for r in fake.requests] == ["/v1/messages?beta=true", "/v1/messages", "/v1/messages/count_tokens?beta=true",
                                                   "/v1/chat/completions", "/v1/responses"]
        assert all(r.headers["accept-encoding"] == "identity" for r in fake.requests)  # the meter reads what passes
        for version in ("v1beta", "v1"):
            base = f"/gemini/{version}/models/gemini-2.5-pro"
            assert call(gw, "POST", f"{base}:generateContent", {"contents": []})[0] == 200
            assert call(gw, "POST", f"{base}:streamGenerateContent", {"contents": []})[0] == 200
            status, body = call(gw, "POST", f"{base}:streamGenerateContent?alt=sse", {"contents": []})
            assert status == 200 and body.count(b"data: ") == 2
            assert call(gw, "POST", f"{base}:countTokens", {"contents": []}) == (200, {"totalTokens": 11})
        assert gemini.paths[-1] == "/v1/models/gemini-2.5-pro:countTokens"
    finally:
        gemini.close()
    record = json.loads(conn.hget(keys.session("session_gw1"), "usage"))
    # 2 Anthropic messages, 2 OpenAI, 3 Gemini generations per version; token counts are not generations
    assert record["requests"] == 2 + 2 + 6
    assert record["input_tokens"] == 2 * USAGE["input_tokens"] + 2 * 1 + 6 * 11
    assert record["output_tokens"] == 2 * USAGE["output_tokens"] + 2 * 1 + 6 * 5
    assert record["models"] == ["claude-priced", "gpt-5", "gemini-x"]  # gpt-5 from the request: the fake names none


def test_the_output_cap_holds_however_the_body_spells_it(open_gateway, fake):
    """The cap is set in the bytes the vendor parses: escaped keys and repeated keys included."""
    gw = open_gateway(Budget(max_tokens=1000))
    body = b'{"model": "claude-priced", "max_tokens": 10, "messages": [], "max\\u005ftokens": 99999}'
    assert call(gw, "POST", "/anthropic/v1/messages", body)[0] == 200
    assert fake.requests[-1].body["max_tokens"] == 1000  # both occurrences set: whichever the vendor keeps
    call(gw, "POST", "/gemini/v1beta/models/g:generateContent", {"generation_config": {"max_output_tokens": 5000}})
    left = 1000 - sum(USAGE.values())
    assert fake.requests[-1].body["generation_config"] == {"max_output_tokens": left}  # the proto's own name is read too
    status, answer = call(gw, "POST", "/anthropic/v1/messages", b"[1, 2]")
    assert status == 400 and "not a JSON object" in answer["error"]["message"]
    status, answer = call(gw, "POST", "/anthropic/v1/messages", b'{"messages": ' + b"[" * 300 + b"]" * 300 + b"}")
    assert status == 400 and "nested more than" in answer["error"]["message"]
    assert len(fake.requests) == 2


def test_the_gateway_reads_a_body_as_a_json_parser_does():
    """The few fields read as the body passes, cut anywhere, are what json.loads reads; the
    output cap written back parses to the same document with that one change."""
    rnd = random.Random(27)
    names = ["model", "usage", "max_tokens", "message", "x", 'q"k', "m\\n", "\u00fc"]

    def value(depth=0):
        roll = rnd.random()
        if depth > 3 or roll < 0.3:
            return rnd.choice([1, -2.5e3, "s", 'q"uo\\te', "", None, True, "\u2603", "a,b}{]["])
        if roll < 0.6:
            return [value(depth + 1) for _ in range(rnd.randint(0, 3))]
        return {rnd.choice(names): value(depth + 1) for _ in range(rnd.randint(0, 4))}

    paths = [("model",), ("usage",), ("max_tokens",), ("message", "usage"), ("message", "model")]
    for _ in range(1000):
        doc = {rnd.choice(names): value() for _ in range(rnd.randint(0, 6))}
        raw = json.dumps(doc, ensure_ascii=rnd.random() < 0.5, indent=rnd.choice([None, 1])).encode()
        raw = raw.replace(b'"model"', b'"mo\\u0064el"') if rnd.random() < 0.3 else raw
        picker = Picker.of(paths)
        cuts = sorted(rnd.sample(range(len(raw) + 1), min(len(raw) + 1, rnd.randint(0, 8)))) + [len(raw)]
        for start, stop in zip([0] + cuts, cuts):
            picker.feed(raw[start:stop])
        expected = {}
        for path in paths:
            here = doc
            for name in path:
                here = here.get(name, picker) if isinstance(here, dict) else picker
            if here is not picker:
                expected[path] = here
        assert picker.values == expected, raw
        edited = bytearray(raw)
        splice(edited, picker, {"max_tokens": 7})
        assert json.loads(edited) == {**doc, "max_tokens": 7}


def test_what_reading_a_body_may_cost_is_bounded():
    flat = b'{"model": "m", "messages": [' + b"{}," * 3_000_000 + b'{}], "max_tokens": 5}'
    picker = Picker.of([("model",), ("max_tokens",)], max_events=1000)
    for start in range(0, len(flat), 1 << 16):
        picker.feed(flat[start:start + (1 << 16)])
    # 9 MB of empty objects under a field nobody reads: skipped in C, a few steps per piece
    assert picker.values == {("model",): "m", ("max_tokens",): 5} and picker.failed is None and picker.events < 1000
    deep = Picker.of([("model",)])
    deep.feed(b'{"messages": ' + b"[" * (MAX_DEPTH + 10))
    assert deep.failed == f"nested more than {MAX_DEPTH} deep"
    busy = Picker.of([("model",)], max_events=100)
    busy.feed(b'{"messages": [' + b"[[[[[[[[0]]]]]]]]," * 100 + b"0]}")
    assert busy.failed == "more than 100 JSON values and separators"


# -- what a session can make the worker hold

def test_a_body_past_the_cap_is_413_and_nothing_is_forwarded(open_gateway, fake):
    gw = open_gateway()
    conn = UnixHTTP(gw.socket_path)
    conn.putrequest("POST", "/anthropic/v1/messages")
    for name, value in {"x-api-key": gw.token, "content-type": "application/json",
                        "content-length": str(gateway_server.MAX_BODY + 1)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()  # answered before the body is read
    assert resp.status == 413 and b"limited to 32 MB" in resp.read()
    conn.close()
    piece = b" " * (1 << 20)
    chunked = UnixHTTP(gw.socket_path)
    chunked.request("POST", "/anthropic/v1/messages", body=(piece for _ in range(gateway_server.MAX_BODY // len(piece) + 1)),
                    headers={"x-api-key": gw.token, "content-type": "application/json"}, encode_chunked=True)
    assert chunked.getresponse().status == 413
    chunked.close()
    assert fake.requests == []


def exchange(path: str, data: bytes) -> bytes:
    """Send raw bytes to a door; the start of its answer (it may answer and close mid-send)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    try:
        sock.sendall(data)
    except OSError:
        pass
    try:
        return sock.recv(4096)
    finally:
        sock.close()


def test_heads_past_their_bounds_are_refused(open_gateway, fake):
    gw = open_gateway()
    head = b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: g\r\nx-api-key: %s\r\n" % gw.token.encode()
    big = head + b"x-big: " + b"a" * (gateway_server.MAX_FIELD + 10) + b"\r\n\r\n"
    many = head + b"".join(b"x-h%d: 1\r\n" % i for i in range(gateway_server.MAX_HEADERS + 1)) + b"\r\n"
    long_line = b"POST /anthropic/v1/messages?" + b"a" * (gateway_server.MAX_LINE + 10) + b" HTTP/1.1\r\n\r\n"
    for data in (big, many, long_line):
        assert exchange(gw.socket_path, data)[8:13] in (b" 400 ", b" 431 ")
    assert fake.requests == []


def test_bodies_held_at_once_are_bounded(open_gateway, folder):
    """Four 30 MB requests to a vendor that does not answer yet: two are read and forwarded
    (60 MB <= MAX_HELD), the others wait for room; the worker's peak memory grows by what is
    held, not by all four."""
    release, arrived = threading.Event(), []

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            left = int(self.headers["Content-Length"])
            while left:
                left -= len(self.rfile.read(min(left, 1 << 16)))
            arrived.append(self.path)
            release.wait(30)
            data = json.dumps({"type": "message", "model": "m", "usage": {"input_tokens": 1, "output_tokens": 1}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    vendor = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    vendor.daemon_threads = True
    threading.Thread(target=vendor.serve_forever, daemon=True).start()
    size = 30 * 2**20
    body = b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "' + b"a" * size + b'"}]}'
    results: list[int] = []
    try:
        gw = open_gateway(anthropic_api_url=f"http://127.0.0.1:{vendor.server_address[1]}")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
        before = proc_figures()
        clients = [threading.Thread(target=lambda: results.append(call(gw, "POST", "/anthropic/v1/messages",
                                                                       io.BytesIO(body))[0])) for _ in range(4)]
        for client in clients:
            client.start()
        until(lambda: len(arrived) == 2, 30, "two bodies at the vendor")
        assert gw._held.used == 2 * len(body) and len(arrived) == 2  # the other two wait for room
        held = proc_figures()
        release.set()
        for client in clients:
            client.join(60)
    finally:
        release.set()
        vendor.shutdown()
        vendor.server_close()
    assert results == [200] * 4 and len(arrived) == 4
    # while two are held and two wait: at most MAX_HELD (64 MB) of bodies and a few MB of
    # buffers; all four read at once would be 120 MB. (Later, as bodies come and go, the
    # allocator's fragmentation may keep more resident than is held.)
    peak_mb = (held["VmHWM"] - before["VmHWM"]) / 1024
    assert peak_mb < gateway_server.MAX_HELD / 2**20 + 12, peak_mb


def hold(path: str, count: int) -> list[socket.socket]:
    """`count` connections to a door, each left idle (nothing sent)."""
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)  # blocking: a unix socket with a full backlog says EAGAIN to one with a timeout
        sock.settimeout(10)
        held.append(sock)
    return held


def knock(path: str, cap, limit: int) -> tuple[dict[str, int], dict[str, int], bytes]:
    """IDLE idle connections to a door: its figures before and while they are held, and what a
    refused connection read."""
    before = proc_figures()
    held = hold(path, IDLE)
    try:
        until(lambda: cap.open == limit and cap.refused == IDLE - limit, 20, "every connection admitted or refused")
        # the door's side of each refused connection is closed: it keeps `limit` sockets open
        until(lambda: door_sockets(path) == limit, 20, "the refused connections closed")
        during = proc_figures()
        answer = held[-1].recv(4096)
        return before, during, answer
    finally:
        for sock in held:
            sock.close()
        until(lambda: cap.open == 0, 20, "the door to count every connection out")


def test_two_thousand_idle_connections_to_the_gateway(open_gateway, fake):
    gw = open_gateway()
    before, during, answer = knock(gw.socket_path, gw.connections, gateway_server.MAX_CONNECTIONS)
    assert answer.startswith(b"HTTP/1.1 503") and b"more than 64 connections" in answer
    assert during["Threads"] <= before["Threads"]  # no thread per connection (another test's may end meanwhile)
    # bound: 64 idle connections (aiohttp's handler and parser, a few kB each) and this test's own 2,000 sockets
    assert during["VmRSS"] - before["VmRSS"] < 8 * 1024, during["VmRSS"] - before["VmRSS"]
    assert [line for line in gw.lines if "refused a connection" in line] == [gw.lines[0]] and len(gw.lines) == 1
    assert "holds 64 open" in gw.lines[0]
    assert call(gw, "POST", "/anthropic/v1/messages", messages())[0] == 200  # the door works again once they left


def test_an_idle_gateway_connection_is_closed(open_gateway, monkeypatch):
    monkeypatch.setattr(gateway_server, "KEEPALIVE_SECONDS", 0.3)
    gw = open_gateway()
    held = hold(gw.socket_path, 10)
    try:
        until(lambda: gw.connections.open == 0, 10, "idle connections closed")
        assert all(sock.recv(1) == b"" for sock in held)
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def connector(conn, settings, monkeypatch):
    session = ConnectorSession(conn, settings)
    yield session
    session.close()


def test_two_thousand_idle_connections_to_the_connector(connector):
    door = connector.connector
    before, during, answer = knock(connector.sock, door.connections, connector_server.MAX_CONNECTIONS)
    assert answer.startswith(b"HTTP/1.1 503") and b"more than 16 connections" in answer
    assert during["Threads"] <= before["Threads"]  # none per connection (another test's may end meanwhile)
    # bound: 16 idle connections (h11 state, a few kB each) and this test's own 2,000 sockets
    assert during["VmRSS"] - before["VmRSS"] < 8 * 1024, during["VmRSS"] - before["VmRSS"]
    refusals = [line for line in connector.lines if "refused a connection" in line]
    assert len(refusals) == 1 and "github connector" in refusals[0]
    assert len(connector.tools()) == 13  # the door works again once they left


def test_connector_idle_connections_close_and_bodies_and_heads_are_bounded(conn, settings, monkeypatch):
    monkeypatch.setattr(connector_server, "IDLE_SECONDS", 0.3)
    session = ConnectorSession(conn, settings)
    try:
        door = session.connector
        held = hold(session.sock, 5)
        until(lambda: door.connections.open == 0, 10, "idle connections closed before any request")
        for sock in held:
            sock.close()
        auth = f"Authorization: Bearer {door.token}\r\n".encode()
        for head, body, status in [
                (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Length: %d\r\n\r\n" % (connector_server.MAX_BODY + 1),
                 b"", b" 413 "),
                (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n",
                 b"%x\r\n%s\r\n" % (connector_server.MAX_BODY + 1, b"a" * (connector_server.MAX_BODY + 1)), b" 413 "),
                (b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * connector_server.MAX_HEAD, b"", b" 400 ")]:
            assert status in exchange(session.sock, head + body)[:20]
    finally:
        session.close()


class GatedGitHub(FakeGitHub):
    """The fake GitHub, holding installation-token requests until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def answer(self, r):
        if r.path.endswith("/access_tokens"):
            self.gate.wait(30)
        return super().answer(r)


@pytest.fixture
def github():
    server = GatedGitHub()
    yield server
    server.gate.set()
    server.close()


def test_the_connectors_blocking_calls_take_at_most_its_worker_threads(conn, settings, private_key, installed, github):
    """Ten tool calls at once while GitHub is slow to mint the installation token: four run in
    threads, six wait for one; the worker gains no thread per call."""
    # an App id of its own: githubkit caches App JWTs per id in the process
    session = ConnectorSession(conn, settings.with_(github_app_id="67893", github_private_key=private_key,
                                                    github_api_url=github.url))
    calls = 10
    results: list = []
    try:
        loop = session.connector.loop
        before = proc_figures()
        caller = threading.Thread(target=lambda: results.extend(session.concurrently(
            "get_issue", [{"owner": "octo", "repo": "api", "issue_number": i} for i in range(1, calls + 1)])))
        caller.start()

        async def limiter():
            return anyio.to_thread.current_default_thread_limiter().statistics()

        def saturated() -> bool:
            stats = asyncio.run_coroutine_threadsafe(limiter(), loop).result(5)
            return stats.borrowed_tokens == connector_server.WORKER_THREADS and stats.tasks_waiting == calls - stats.borrowed_tokens

        until(saturated, 20, "every call in a thread or waiting for one")
        during = proc_figures()
        workers = [t for t in threading.enumerate() if t.name == "AnyIO worker thread" and getattr(t, "loop", None) is loop]
        assert len(workers) == connector_server.WORKER_THREADS
        # the connector's workers, the fake GitHub's thread for the one token request, the caller's thread
        assert during["Threads"] - before["Threads"] <= connector_server.WORKER_THREADS + 2
        github.gate.set()
        caller.join(30)
    finally:
        github.gate.set()
        session.close()
    assert len(results) == calls and not any(r.is_error for r in results)
