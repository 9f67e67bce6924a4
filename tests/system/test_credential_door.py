"""Credential doors: the session calls `<NAME>_URL`, the worker adds the secret's header and
forwards to the declared origin only. A fake service on the host's loopback (allowed for the
test through ROUTINELY_SERVICES_ALLOW_HOSTS, as an operator would) sees the header; the
session never does. The first test runs the caller in a real sandbox (network none)."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from workers.credentials import open_services
from workers.credentials.server import MAX_CONNECTIONS
from workers.credentials.session import ServiceError
from workers.sandbox import Sandbox
from tests.fake_service import VALUE, FakeService
from tests.support import SYSTEM_PYTHON, needs_sandbox, run_in_sandbox


@pytest.fixture
def fake():
    service = FakeService()
    yield service
    service.close()


def _declared(port: int, host: str = "127.0.0.1", **more) -> dict:
    return {"sentry": {"url": f"http://{host}:{port}", "secret": "SENTRY_TOKEN",
                       "header": "Authorization: Bearer {secret}", **more}}


def _open(settings, fake, lines, **more):
    box = Sandbox(network="none", enabled=False)  # the doors bridged on the host's loopback, as with the sandbox off
    allowed = settings.with_(services_allow_hosts=(f"127.0.0.1:{fake.port}",))
    doors, env = open_services(allowed, box, _declared(fake.port, **more), {"SENTRY_TOKEN": VALUE}, lines.append, "t")
    return box, doors, env


def _get(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@needs_sandbox
def test_a_sandboxed_session_reaches_the_service_through_its_door_and_never_holds_the_secret(settings, fake, tmp_path):
    lines: list[str] = []
    box = Sandbox.open({"network": "none", "allow_hosts": []}, "sess_svc", False, lines.append)
    allowed = settings.with_(services_allow_hosts=(f"127.0.0.1:{fake.port}",))
    doors, env = open_services(allowed, box, _declared(fake.port), {"SENTRY_TOKEN": VALUE}, lines.append, "sess_svc")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, urllib.request\n"
        "url = os.environ['SENTRY_URL'] + '/api/0/projects/?q=1'\n"
        "req = urllib.request.Request(url, headers={'Authorization': 'Bearer forged-by-the-session'})\n"
        "with urllib.request.urlopen(req, timeout=10) as r:\n"
        "    print('STATUS', r.status, r.read().decode())\n"
        "print('ENV', json.dumps(dict(os.environ)))\n")
    box.share(tmp_path)
    try:
        assert set(env) == {"SENTRY_URL"} and env["SENTRY_URL"].startswith("http://127.0.0.1:")
        done = run_in_sandbox(box, [SYSTEM_PYTHON, str(probe)], {"PATH": "/usr/bin:/bin", **env}, tmp_path, tmp_path)
    finally:
        doors.close()
        box.close()
    out = done.stdout + done.stderr
    assert 'STATUS 200 {"path": "/api/0/projects/?q=1", "authorized": true}' in out, out
    # the service saw the stored secret, once, in place of what the session sent
    assert fake.seen[-1]["auth"] == [f"Bearer {VALUE}"] and fake.seen[-1]["host"] == f"127.0.0.1:{fake.port}"
    assert VALUE not in out  # neither in the answer nor in the session's environment
    assert any(line == "routinely: service sentry: GET /api/0/projects/ → 200" for line in lines), lines
    assert not any(VALUE in line for line in lines)


def test_paths_outside_the_allowlist_and_unplain_paths_are_refused_before_the_service(settings, fake):
    lines: list[str] = []
    box, doors, env = _open(settings, fake, lines, paths=["/api/0/projects/", "/api/0/redirect"])
    base = env["SENTRY_URL"]
    try:
        assert _get(base + "/api/0/projects/abc/")[0] == 200
        assert _get(base + "/api/0/projects/abc/", "POST", {"Content-Type": "application/json"}, b'{"a": 1}')[0] == 200
        assert fake.seen[-1]["body"] == '{"a": 1}'
        for path in ("/api/0/organizations/", "/api/0/projectsX", "/api/0/projects/../organizations/",
                     "/api/0/projects/%2e%2e/organizations/", "/api/0/projects//x", "/api/0/projects/..%2fx", "/api/0/projects//"):
            status, body = _get(base + path)
            assert status == 403 and "refused" in body, (path, status, body)
        status, _ = _get(base + "/api/0/redirect")
        assert status == 302  # passed back as it is: the door never follows it (the header stays home)
    finally:
        doors.close()
        box.close()
    assert [s["path"] for s in fake.seen] == ["/api/0/projects/abc/", "/api/0/projects/abc/", "/api/0/redirect"]
    assert "routinely: service sentry: GET /api/0/organizations/ refused: outside the service's paths" in lines
    assert "routinely: service sentry: POST /api/0/projects/abc/ → 200" in lines
    assert not any(VALUE in line for line in lines)


def test_a_loopback_or_private_origin_is_refused_unless_the_operator_lists_it(settings, fake):
    lines: list[str] = []
    box = Sandbox(network="none", enabled=False)
    try:
        with pytest.raises(ServiceError, match="loopback.*ROUTINELY_SERVICES_ALLOW_HOSTS lists 127.0.0.1"):
            open_services(settings, box, _declared(fake.port), {"SENTRY_TOKEN": VALUE}, lines.append)
        with pytest.raises(ServiceError, match="private"):
            open_services(settings, box, _declared(443, host="10.1.2.3"), {"SENTRY_TOKEN": VALUE}, lines.append)
        # a name that resolves to loopback: judged on the address dialed
        doors, env = open_services(settings, box, _declared(fake.port, host="localhost"), {"SENTRY_TOKEN": VALUE},
                                   lines.append)
        try:
            status, body = _get(env["SENTRY_URL"] + "/api/0/projects/")
        finally:
            doors.close()
        assert status == 502 and "loopback" in body, body
        assert fake.seen == []
        with pytest.raises(ServiceError, match="not among the routine's `secrets`"):
            open_services(settings, box, _declared(fake.port), {}, lines.append)
        with pytest.raises(ServiceError, match="line break"):
            open_services(settings.with_(services_allow_hosts=(f"127.0.0.1:{fake.port}",)), box, _declared(fake.port),
                          {"SENTRY_TOKEN": "a\r\nX-Injected: 1"}, lines.append)
    finally:
        box.close()


def test_one_session_holds_a_bounded_number_of_door_connections(settings, fake):
    lines: list[str] = []
    box, doors, env = _open(settings, fake, lines)
    sock_path = doors.sockets["sentry"]
    clients = []
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            c = socket.socket(socket.AF_UNIX)
            c.connect(sock_path)
            clients.append(c)
        clients[-1].settimeout(5)
        assert clients[-1].recv(100).startswith(b"HTTP/1.1 503")
        assert sum("refused a connection" in line for line in lines) == 1
        for c in clients:
            c.close()
        clients = []
        assert _get(env["SENTRY_URL"] + "/api/0/x")[0] == 200  # the cap frees up as connections close
    finally:
        for c in clients:
            c.close()
        doors.close()
        box.close()


def test_request_bodies_past_the_cap_are_refused_announced_or_chunked(settings, fake, monkeypatch):
    import http.client
    from urllib.parse import urlsplit

    from workers.credentials import server

    monkeypatch.setattr(server, "MAX_BODY", 1024 * 1024)
    lines: list[str] = []
    box, doors, env = _open(settings, fake, lines)
    port = urlsplit(env["SENTRY_URL"]).port
    try:
        assert _get(env["SENTRY_URL"] + "/api/0/x", "POST", data=b"x" * (2 * 1024 * 1024))[0] == 413
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/api/0/x", body=iter([b"y" * 65536] * 32), encode_chunked=True)
        assert conn.getresponse().status == 413
        conn.close()
        assert _get(env["SENTRY_URL"] + "/api/0/x", "POST", data=b"z" * 1000)[0] == 200  # under the cap: passed on
    finally:
        doors.close()
        box.close()
    assert all(len(s["body"]) <= 1024 * 1024 for s in fake.seen)  # streamed on, never past the cap
    assert [s.get("cut", False) for s in fake.seen if len(s["body"]) > 1000] in ([], [True])  # a cut one is never taken as whole
    assert sum("refused: a body over 1 MB" in line for line in lines) == 2, lines
