"""The processes' doors: the loopback rule without an admin token, one-line start-up errors."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ADMIN_TOKEN, free_port
from tests.support import ROOT_DIR


ROOT = ROOT_DIR


def gunicorn(bind: str, redis_url: str, tmp_path, **extra) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_url, "ROUTINELY_DATA_DIR": str(tmp_path), **extra}
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"), "--bind", bind,
                           "app:create_app()"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_web_refuses_to_start_without_an_admin_token_even_on_loopback(redis_server, tmp_path):
    done = gunicorn(f"127.0.0.1:{free_port()}", redis_server.url, tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "routinely: ROUTINELY_ADMIN_TOKEN is not set: set it (`routinely up` makes one in its data dir)" in done.stderr


def test_web_stops_on_a_wrong_setting_with_one_line(redis_server, tmp_path):
    done = gunicorn(f"127.0.0.1:{free_port()}", redis_server.url, tmp_path, PUBLIC_URL="not a url", ROUTINELY_ADMIN_TOKEN=ADMIN_TOKEN)
    assert done.returncode != 0 and "routinely: PUBLIC_URL must be an http(s):// URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_web_stops_on_a_wrong_worker_count_or_log_level_with_one_line(redis_server, tmp_path):
    for name, value, line in [
        ("WEB_CONCURRENCY", "0", "routinely: WEB_CONCURRENCY must be a whole number of web workers, 1 or more (it is '0')"),
        ("ROUTINELY_LOG_LEVEL", "loud", "routinely: ROUTINELY_LOG_LEVEL must be one of debug, info, warning, error, critical"),
    ]:  # (a non-number or a negative one gunicorn refuses itself: it reads WEB_CONCURRENCY first)
        done = gunicorn(f"127.0.0.1:{free_port()}", redis_server.url, tmp_path, ROUTINELY_ADMIN_TOKEN=ADMIN_TOKEN, **{name: value})
        assert done.returncode != 0 and line in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_up_makes_an_admin_token_prints_a_sign_in_link_and_the_api_needs_it(redis_server, tmp_path):
    import http.client
    import socket

    from tests.support import routinely_up

    with routinely_up(redis_server.url, tmp_path) as (port, data, lines):
        token = (data / "admin_token").read_text().strip()
        assert (data / "admin_token").stat().st_mode & 0o777 == 0o600 and len(token) >= 32
        assert f"routinely: sign in at http://127.0.0.1:{port}/login?code=" in lines[1] and token not in "".join(lines)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # printed once the web answers: no retry
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/api/sessions")
        assert c.getresponse().status == 401  # loopback, no token: refused
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/api/sessions", headers={"Authorization": f"Bearer {token}"})
        assert c.getresponse().status == 200


def test_metrics_sum_the_door_counts_of_every_gunicorn_worker(redis_server, tmp_path):
    import http.client
    import time

    from tests.support import SECRET, body_of, delivery_headers, fixture

    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_server.url, "ROUTINELY_DATA_DIR": str(tmp_path),
           "ROUTINELY_ADMIN_TOKEN": ADMIN_TOKEN, "GITHUB_WEBHOOK_SECRET": SECRET, "WEB_CONCURRENCY": "3"}
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"), "--bind",
                            f"127.0.0.1:{port}", "app:create_app()"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)

    def request(method, path, body=b"", headers=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request(method, path, body, headers or {})
        r = c.getresponse()
        return r.status, r.read().decode()

    try:
        for _ in range(100):
            try:
                request("GET", "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        body = body_of(fixture("pull_request.opened.json"))
        for i in range(12):  # new connections: gunicorn spreads them over its workers
            headers = delivery_headers("pull_request", body)
            if i % 3 == 0:
                headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
            request("POST", "/webhooks/github", body, headers)
        assert request("GET", "/metrics")[0] == 401
        status, text = request("GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200
        assert 'routinely_deliveries_total{event="pull_request",outcome="accepted"} 8.0' in text
        assert 'routinely_deliveries_total{event="unverified",outcome="refused_signature"} 4.0' in text
        assert "routinely_ingest_seconds_count 12.0" in text
        dirs = list((tmp_path / "metrics").iterdir())
        assert len(dirs) == 1 and list(dirs[0].glob("counter_*.db"))  # one file per worker that counted, summed above
    finally:
        web.terminate()
        web.wait(60)  # gunicorn waits its graceful_timeout (30 s) for kept-alive workers, then kills them
