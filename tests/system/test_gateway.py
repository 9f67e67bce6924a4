"""The model gateway on its own: a real aiohttp server on a unix socket, a real HTTP client,
and the fake vendor APIs (tests/fake_models.py) as upstream."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http.client
import pytest

from routinely.storage import keys
from routinely.records import model_usage
from routinely.routines.prices import PriceError, Prices
from tests.fake_models import USAGE
from tests.support import redis_snapshot, wait_for
from workers.gateway import Gateway, session_env
from workers.gateway.meter import Budget, Meter



class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("gateway")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


def call(gw, method, path, body=None, headers=None, token=None):
    http_ = UnixHTTP(gw.socket_path)
    hdrs = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        hdrs.setdefault("x-api-key", token)
    http_.request(method, path, body=json.dumps(body) if body is not None else None, headers=hdrs)
    resp = http_.getresponse()
    data = resp.read()
    http_.close()
    return resp.status, resp.getheader("content-type"), data


def messages(stream=False, model="claude-priced", max_tokens=4096):
    return {"model": model, "max_tokens": max_tokens, "stream": stream, "tools": [{"name": "Bash"}],
            "messages": [{"role": "user", "content": "hi"}]}


def test_a_wrong_or_other_sessions_token_gets_401_and_nothing_moves(conn, open_gateway, fake):
    gw = open_gateway()
    other = open_gateway(sid="session_gw2")
    before = redis_snapshot(conn)
    for token in (None, "wrong", other.token, gw.token + "x"):
        status, _, body = call(gw, "POST", "/anthropic/v1/messages", messages(), token=token)
        assert status == 401 and b"wrong or missing session token" in body
    assert fake.requests == [] and redis_snapshot(conn) == before


@pytest.mark.parametrize("stream", [False, True])
def test_the_real_key_reaches_the_vendor_and_usage_is_metered(conn, open_gateway, fake, stream):
    gw = open_gateway()
    status, ctype, body = call(gw, "POST", "/anthropic/v1/messages?beta=true", messages(stream), token=gw.token)
    assert status == 200
    if stream:
        assert ctype.startswith("text/event-stream") and b"event: message_stop" in body
    else:
        assert json.loads(body)["usage"] == USAGE
    seen = fake.requests[-1]
    assert seen.headers["x-api-key"] == "sk-ant-real" and gw.token not in json.dumps(seen.headers)
    assert seen.path == "/v1/messages?beta=true"
    record = json.loads(conn.hget(keys.session("session_gw1"), "usage"))
    assert record == {"requests": 1, **USAGE, "cost_usd": pytest.approx((120 * 3 + 30 * 15 + 7 * 3 + 5 * 3) / 1e6),
                      "models": ["claude-priced"]}
    day = model_usage.daily(conn, "account", "alice", "UTC", time.time(), days=1)[0]
    assert day["requests"] == 1 and day["output_tokens"] == 30
    metrics = model_usage.metrics(conn)
    assert ({"routine": "alice/r", "model": "claude-priced", "kind": "output_tokens"}, 30.0) in metrics["tokens"]
    assert metrics["cost_usd"][0][1] == pytest.approx(record["cost_usd"])


def test_an_unpriced_model_counts_tokens_with_cost_unknown(conn, open_gateway):
    gw = open_gateway()
    call(gw, "POST", "/anthropic/v1/messages", messages(model="claude-priced"), token=gw.token)
    call(gw, "POST", "/anthropic/v1/messages", messages(model="mystery-model"), token=gw.token)
    record = json.loads(conn.hget(keys.session("session_gw1"), "usage"))
    assert record["requests"] == 2 and record["input_tokens"] == 240 and record["cost_usd"] is None
    assert record["models"] == ["claude-priced", "mystery-model"]
    assert model_usage.daily(conn, "routine", "alice/r", "UTC", time.time(), days=1)[0]["unpriced_requests"] == 1


def test_openai_and_gemini_get_their_own_keys(open_gateway, fake):
    gw = open_gateway()
    env = session_env("http://127.0.0.1:1", gw.token)
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:1/openai/v1" and env["OPENAI_API_KEY"] == gw.token
    assert env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:1/gemini" and env["GEMINI_API_KEY"] == gw.token
    status, _, _ = call(gw, "POST", "/openai/v1/responses", {"model": "gpt-5", "input": "hi"},
                        headers={"authorization": f"Bearer {gw.token}"})
    assert status == 200
    assert fake.requests[-1].path == "/v1/responses" and fake.requests[-1].headers["authorization"] == "Bearer sk-openai-real"
    status, _, _ = call(gw, "POST", f"/gemini/v1beta/models/gemini-2.5-pro:generateContent?key={gw.token}",
                        {"contents": []})
    assert status == 200
    seen = fake.requests[-1]
    assert seen.path == "/v1beta/models/gemini-2.5-pro:generateContent" and seen.headers["x-goog-api-key"] == "gm-real"
    assert gw.token not in json.dumps([r.headers for r in fake.requests]) + json.dumps([r.path for r in fake.requests])


def test_an_oauth_token_is_sent_as_bearer_with_its_beta(open_gateway, fake):
    gw = open_gateway(anthropic_api_key=None, claude_code_oauth_token="oauth-real")
    call(gw, "POST", "/anthropic/v1/messages", messages(), token=gw.token, headers={"anthropic-beta": "claude-code-20250219"})
    seen = fake.requests[-1]
    assert seen.headers["authorization"] == "Bearer oauth-real" and "x-api-key" not in seen.headers
    assert seen.headers["anthropic-beta"] == "claude-code-20250219,oauth-2025-04-20"


def test_budgets_cap_output_then_refuse(conn, open_gateway, fake):
    gw = open_gateway(Budget(max_tokens=200))
    call(gw, "POST", "/anthropic/v1/messages", messages(max_tokens=4096), token=gw.token)
    assert fake.requests[-1].body["max_tokens"] == 200
    call(gw, "POST", "/anthropic/v1/messages", messages(max_tokens=4096), token=gw.token)
    assert fake.requests[-1].body["max_tokens"] == 200 - 162
    status, _, body = call(gw, "POST", "/anthropic/v1/messages", messages(), token=gw.token)
    assert status == 403 and b"budget_exceeded" in body and len(fake.requests) == 2
    assert gw.stop_reason == "budget_exceeded" and gw.refused_at is not None
    assert any("budget_exceeded" in line for line in gw.lines)
    spend = open_gateway(Budget(max_cost_usd=0.0005), sid="session_gw3")
    call(spend, "POST", "/anthropic/v1/messages", messages(), token=spend.token)
    call(spend, "POST", "/anthropic/v1/messages", messages(), token=spend.token)
    assert call(spend, "POST", "/anthropic/v1/messages", messages(), token=spend.token)[0] == 403


def test_sse_passes_through_unbuffered(open_gateway, tmp_path):
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, event in enumerate([{"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 5}}},
                                       {"type": "message_delta", "usage": {"output_tokens": 9}}]):
                chunk = f"data: {json.dumps(event)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                if i == 0:
                    release.wait(30)  # the rest only after the client has read the first event
            self.wfile.write(b"0\r\n\r\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gw = open_gateway(anthropic_api_url=f"http://127.0.0.1:{server.server_address[1]}")
        http_ = UnixHTTP(gw.socket_path)
        http_.request("POST", "/anthropic/v1/messages", body=json.dumps(messages(True)),
                      headers={"x-api-key": gw.token, "content-type": "application/json"})
        resp = http_.getresponse()
        first = resp.read1(65536)
        assert b"message_start" in first and b"message_delta" not in first  # while the vendor holds the rest
        release.set()
        rest = resp.read()
        assert b"message_delta" in rest
        http_.close()
        deadline = time.time() + 5
        while gw.meter.total["requests"] == 0 and time.time() < deadline:
            time.sleep(0.02)
        assert gw.meter.total["input_tokens"] == 5 and gw.meter.total["output_tokens"] == 9
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_an_unreachable_vendor_is_one_line_and_a_502(open_gateway):
    gw = open_gateway(anthropic_api_url="http://127.0.0.1:9")
    for _ in range(3):
        status, _, body = call(gw, "POST", "/anthropic/v1/messages", messages(), token=gw.token)
        assert status == 502 and b"cannot be reached" in body
    assert [line for line in gw.lines if "cannot reach http://127.0.0.1:9" in line] == [gw.lines[0]]
    assert gw.meter.total["requests"] == 0


def test_price_files(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"m-1": {"input": 1, "output": 2}, "m-1-big": {"input": 10, "output": 20}}))
    prices = Prices.load(good)
    assert prices.cost("m-1-big-20260101", {"input_tokens": 1_000_000}) == 10  # the longest name, a date after it
    assert prices.cost("m-1[1m]", {"output_tokens": 500_000}) == 1
    assert prices.cost("m-1-2", {"input_tokens": 5}) is None  # a newer version is another model: unknown, not mispriced
    assert prices.cost("m-1x", {"input_tokens": 5}) is None
    assert prices.cost("other", {"input_tokens": 5}) is None
    assert Prices.load().price("claude-sonnet-4-5-20250929")["input"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("m: {input: cheap}\n")
    with pytest.raises(PriceError, match="'m' needs input and output"):
        Prices.load(bad)


def test_a_closed_gateway_leaves_no_thread_behind(conn, settings, fake, tmp_path):
    """A worker runs thousands of sessions: each gateway's server and metering threads end with it."""
    s = settings.with_(anthropic_api_url=fake.url, anthropic_api_key="k")
    before = threading.active_count()
    for i in range(5):
        gw = Gateway.start(s, Meter(conn, Prices({}), f"session_t{i}", "a/r", "a", "UTC"), str(tmp_path / f"{i}.sock"),
                           lambda line: None)
        assert call(gw, "POST", "/anthropic/v1/messages", messages(), token=gw.token)[0] == 200
        gw.close()
    # a thread may take a moment to end after close() on a busy machine; five sessions' worth
    # left behind would never come back down
    assert wait_for(lambda: threading.active_count() <= before, timeout=10), threading.enumerate()


def test_metrics_show_tokens_and_cost_by_routine_and_model_and_the_stops(conn, client, open_gateway):
    gw = open_gateway()
    call(gw, "POST", "/anthropic/v1/messages", messages(), token=gw.token)
    model_usage.record_stop(conn, "alice/r", "stalled")
    text = client.get("/metrics").data.decode()
    assert 'routinely_model_tokens_total{kind="output_tokens",model="claude-priced",routine="alice/r"} 30.0' in text
    assert 'routinely_model_cost_usd_total{model="claude-priced",routine="alice/r"} 0.000846' in text
    assert 'routinely_session_stops_total{reason="stalled",routine="alice/r"} 1.0' in text
