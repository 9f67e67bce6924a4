"""The webhook door under a real gunicorn: body framing (chunked, short, oversized), the 405,
the 503 log line, and what the event record keeps for explaining a delivery."""
from __future__ import annotations

import logging
import os
import socket
import uuid

import orjson
import pytest

from app import create_app
from routinely.storage import keys
from tests.support import ADMIN_TOKEN, apply, body_of, CuttingProxy, delivery_headers, fixture, gh, gunicorn, post, redis_snapshot, SECRET, wait_for


MB = 1024 * 1024


@pytest.fixture(scope="module")
def web(redis_server, tmp_path_factory):
    """One gunicorn serving the app, as the Procfile runs it."""
    tmp = tmp_path_factory.mktemp("web")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "REDIS_URL": redis_server.url, "ROUTINELY_DATA_DIR": str(tmp),
           "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_ADMIN_TOKEN": ADMIN_TOKEN}
    proc, port = gunicorn("app:create_app()", env)
    yield port
    proc.terminate()
    proc.wait(10)


def raw_request(port: int, head: dict[str, str], body_parts: list[bytes], half_close: bool = False) -> tuple[int, dict]:
    """Send a request byte by byte as given; return the status and the JSON answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = ["POST /webhooks/github HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in head.items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        for part in body_parts:
            s.sendall(part)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before reading everything: the answer is still there
    if half_close:
        s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head_part, _, rest = data.partition(b"\r\n\r\n")
            length = next((int(l.split(b":")[1]) for l in head_part.split(b"\r\n") if l.lower().startswith(b"content-length")), None)
            if length is not None and len(rest) >= length:
                break
    s.close()
    head_part, _, rest = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), orjson.loads(rest) if rest else {}


def chunked(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return parts + [b"0\r\n\r\n"]


def _headers(body: bytes) -> dict[str, str]:
    return delivery_headers("pull_request", body)


def test_a_chunked_delivery_is_read_whole_and_started(web, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    body = body_of(fixture("pull_request.opened.json"))
    status, answer = raw_request(web, {**_headers(body), "Transfer-Encoding": "chunked"}, chunked(body, 1000))
    assert status == 202 and len(answer["sessions"]) == 1


def test_a_chunked_body_over_25_mb_is_413_not_401_and_stores_nothing(web, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    before = redis_snapshot(conn)
    body = b'{"a": "' + b"x" * (25 * MB + 10) + b'"}'
    status, answer = raw_request(web, {**_headers(body), "Transfer-Encoding": "chunked"}, chunked(body, MB))
    assert status == 413 and "25 MB" in answer["error"]
    assert redis_snapshot(conn) == before


def test_an_announced_body_over_25_mb_is_413_before_it_is_read(web, conn):
    before = redis_snapshot(conn)
    body = b"{}"
    status, answer = raw_request(web, {**_headers(body), "Content-Length": str(25 * MB + 1)}, [body])
    assert status == 413 and redis_snapshot(conn) == before


def test_a_body_shorter_than_its_content_length_is_400_and_stores_nothing(web, conn):
    apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
    before = redis_snapshot(conn)
    body = body_of(fixture("pull_request.opened.json"))
    cut = body[: len(body) // 2]
    status, answer = raw_request(web, {**_headers(body), "Content-Length": str(len(body))}, [cut], half_close=True)
    assert status == 400 and "Content-Length" in answer["error"]
    assert redis_snapshot(conn) == before


def test_get_on_the_webhook_path_is_405_with_allow_and_stores_nothing(client, conn):
    before = redis_snapshot(conn)
    for method in ("GET", "PUT", "DELETE"):
        resp = client.open("/webhooks/github", method=method)
        assert resp.status_code == 405 and resp.headers["Allow"] == "POST" and resp.get_json()["error"]
    assert redis_snapshot(conn) == before


def test_flask_routes_answer_405_with_allow(client):
    resp = client.post("/api/sessions")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]


def test_a_503_log_line_names_the_delivery(settings, conn, redis_server, caplog):
    proxy = CuttingProxy(redis_server.port)
    try:
        app = create_app(settings.with_(redis_url=proxy.url))
        apply(conn, {"name": "r", "triggers": [gh(["pull_request"])]})
        app.extensions["routinely"].starter.cache.get(app.extensions["routinely"].conn)
        proxy.mode = "cut"
        body = body_of(fixture("pull_request.opened.json"))
        delivery = str(uuid.uuid4())
        with caplog.at_level(logging.WARNING):
            resp = app.test_client().post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body, delivery=delivery))
        assert resp.status_code == 503
        lines = [r.getMessage() for r in caplog.records if "503" in r.getMessage()]
        assert lines and all(delivery in line for line in lines)
        assert SECRET not in caplog.text
    finally:
        proxy.close()


def test_the_event_record_keeps_the_filter_fields_of_the_watching_routines(client, conn):
    apply(conn, {"name": "main-only", "triggers": [gh(["pull_request.opened"], {"field": "base_branch", "op": "equals", "value": "main"})]},
          {"name": "labels", "triggers": [gh(["pull_request.closed"], {"field": "labels", "op": "equals", "value": "bug"},
                                             {"field": "is_draft", "op": "equals", "value": False})]},
          {"name": "releases", "triggers": [gh(["release"], {"field": "tag", "op": "starts_with", "value": "v"})]})
    resp, _ = post(client, "pull_request", fixture("pull_request.opened.json"))
    assert resp.get_json()["sessions"] == []  # base is master
    event_id = client.get("/api/events").get_json()[0]["id"]
    record = orjson.loads(conn.get(keys.event(event_id)))
    assert record["event"] == "pull_request.opened" and record["repository"] == "Codertocat/Hello-World"
    assert record["filter_fields"] == {"base_branch": "master", "is_draft": False, "labels": []}


def test_an_unwatched_repository_keeps_no_filter_fields(client, conn):
    apply(conn, {"name": "r", "repositories": ["octo/else"],
                 "triggers": [gh(["pull_request"], {"field": "title", "op": "contains", "value": "x"})]})
    post(client, "pull_request", fixture("pull_request.opened.json"))
    event_id = client.get("/api/events").get_json()[0]["id"]
    assert "filter_fields" not in orjson.loads(conn.get(keys.event(event_id)))


READ_SECONDS = 2  # ROUTINELY_WEB_READ_SECONDS for this test (10 by default)


@pytest.fixture
def web_with_deadline(redis_server, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_server.url,
           "ROUTINELY_DATA_DIR": str(tmp_path), "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_ADMIN_TOKEN": ADMIN_TOKEN,
           "ROUTINELY_WEB_READ_SECONDS": str(READ_SECONDS)}
    proc, port = gunicorn("app:create_app()", env)
    yield port
    proc.terminate()
    proc.wait(10)


def test_half_sent_heads_cannot_hold_every_thread(web_with_deadline):
    """More stalled heads than the web has threads (one worker, 2 threads here): each is closed
    once it makes no progress for ROUTINELY_WEB_READ_SECONDS, and `web` answers again while they
    are still open. (With plain gthread it never answers while they are open.)"""
    web = web_with_deadline
    stalled = []
    for _ in range(4):  # twice the threads
        s = socket.create_connection(("127.0.0.1", web), timeout=READ_SECONDS * 5)
        s.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        stalled.append(s)
    try:
        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", web), timeout=2) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    return probe.recv(64).startswith(b"HTTP/1.1 200")
            except OSError:
                return False

        assert wait_for(answers, timeout=READ_SECONDS * 4, every=0.5)
        assert all(s.recv(1) in (b"", b"H") for s in stalled[:2])  # the first two were cut off, not served
    finally:
        for s in stalled:
            s.close()
