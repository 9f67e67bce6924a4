"""The JSON API: listings, limits, admin token, health."""
from __future__ import annotations

import subprocess
import sys

import pytest

from app import create_app
from tests.support import apply, body_of, delivery_headers, fixture, gh, redis_snapshot


def fire(client, n=1):
    for _ in range(n):
        body = body_of(fixture("pull_request.opened.json"))
        client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))


def test_listings_are_newest_first_and_filter_by_routine(client, conn):
    apply(conn, {"name": "a", "triggers": [gh(["pull_request"])]}, {"name": "b", "triggers": [gh(["pull_request.opened"])]})
    fire(client, 3)
    everything = client.get("/api/sessions").get_json()
    assert len(everything) == 6
    created = [s["created_at"] for s in everything]
    assert created == sorted(created, reverse=True)
    only_a = client.get("/api/sessions?routine=a").get_json()
    assert len(only_a) == 3 and {s["routine"] for s in only_a} == {"a"}
    assert len(client.get("/api/sessions?limit=2").get_json()) == 2
    assert len(client.get("/api/events?limit=1").get_json()) == 1


@pytest.mark.parametrize("limit", ["0", "1001", "ten", "-1"])
def test_bad_limits_are_400(client, conn, limit):
    assert client.get(f"/api/sessions?limit={limit}").status_code == 400
    assert client.get(f"/api/events?limit={limit}").status_code == 400


def test_unknown_session_is_404(client, conn):
    resp = client.get("/api/sessions/session_nope")
    assert resp.status_code == 404 and "routinely sessions" in resp.get_json()["error"]


def test_admin_token_guards_the_api_but_not_health_or_webhooks(settings, conn):
    app = create_app(settings.with_(admin_token="s3cret"))
    client = app.test_client()
    apply(conn, {"name": "a", "triggers": [gh(["pull_request"])]})
    before = redis_snapshot(conn)
    for path in ("/api/sessions", "/api/events", "/api/sessions/x"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # only the failed sign-ins are counted (app.auth throttles per address)
    assert {k: v for k, v in redis_snapshot(conn).items() if not k.startswith(b"rly:console:failures:")} == before
    assert client.get("/api/sessions", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    fire(client)
    assert len(client.get("/api/sessions", headers={"Authorization": "Bearer s3cret"}).get_json()) == 1


def test_cli_sessions_prints_the_api_objects(client, conn, redis_server, tmp_path):
    apply(conn, {"name": "a", "triggers": [gh(["pull_request"])]})
    fire(client)
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PUBLIC_URL": "http://routinely.test"}
    out = subprocess.run([sys.executable, "-m", "cli", "sessions", "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout) == client.get("/api/sessions").get_json()


def test_cli_says_one_line_when_redis_is_unreachable(tmp_path):
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cli", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr == ("routinely: cannot reach Redis at redis://127.0.0.1:1/0 (REDIS_URL): "
                          "check that it runs and the URL is right\n")
    # without REDIS_URL it is the Redis `routinely up` would run: say so, and how to start it
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ROUTINELY_DATA_DIR": str(tmp_path / "d")}
    out = subprocess.run([sys.executable, "-m", "cli", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr == (f"routinely: cannot reach Redis at unix://{tmp_path}/d/redis/redis.sock (the one `routinely up` "
                          "runs when REDIS_URL is unset): start `routinely up`, or set REDIS_URL to your Redis\n")


@pytest.mark.parametrize("name,value,message", [
    ("REDIS_URL", "http://x", "REDIS_URL must start with"),
    ("REDIS_URL", "redis://127.0.0.1:notaport", "REDIS_URL 'redis://127.0.0.1:notaport' has no valid port"),
    ("REDIS_URL", "redis://127.0.0.1:99999/0", "has no valid port"),
    ("REDIS_URL", "redis:///0", "names no host"),
    ("REDIS_URL", "redis://127.0.0.1:6379/db", "the database after the host must be a number"),
    ("REDIS_URL", "unix://", "names no socket"),
    ("ROUTINELY_SCHEDULER_LEASE_SECONDS", "15s", "ROUTINELY_SCHEDULER_LEASE_SECONDS must be a number of seconds from 1 to 3600 (it is '15s')"),
    ("ROUTINELY_SCHEDULER_LEASE_SECONDS", "0", "from 1 to 3600"),
    ("PUBLIC_URL", "ftp://x", "PUBLIC_URL must be an http(s)"),
    ("GITHUB_APP_ID", "abc", "GITHUB_APP_ID must be the App's numeric id"),
    ("GITHUB_APP_ID", "١٢", "GITHUB_APP_ID must be the App's numeric id"),
    ("ROUTINELY_MAX_CHAIN_DEPTH", "²", "ROUTINELY_MAX_CHAIN_DEPTH takes a whole number from 1 to 100"),
    ("GITHUB_PRIVATE_KEY", "-----BEGIN nonsense", "not a PEM private key"),
    ("ROUTINELY_SHUTDOWN_GRACE_SECONDS", "soon", "ROUTINELY_SHUTDOWN_GRACE_SECONDS must be a number of seconds from 0 to 86400"),
    ("ROUTINELY_SHUTDOWN_GRACE_SECONDS", "-1", "ROUTINELY_SHUTDOWN_GRACE_SECONDS must be a number of seconds from 0 to 86400"),
])
def test_a_wrong_setting_stops_with_one_line(tmp_path, name, value, message):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0", name: value}
    out = subprocess.run([sys.executable, "-m", "cli", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and message in out.stderr and out.stderr.count("\n") == 1


def test_a_bad_redis_url_never_echoes_its_password(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "REDIS_URL": "redis://user:hunter2@127.0.0.1:port/0"}
    out = subprocess.run([sys.executable, "-m", "cli", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "has no valid port" in out.stderr and "hunter2" not in out.stderr


def test_the_scheduler_reads_its_lease_from_settings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0",
           "ROUTINELY_SCHEDULER_LEASE_SECONDS": "15s"}
    out = subprocess.run([sys.executable, "-m", "cli", "scheduler"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "ROUTINELY_SCHEDULER_LEASE_SECONDS must be a number of seconds" in out.stderr
    from routinely.config import Settings

    assert Settings.from_env({"ROUTINELY_SCHEDULER_LEASE_SECONDS": "2.5"}).scheduler_lease_seconds == 2.5


def test_a_bad_private_key_is_never_echoed(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GITHUB_APP_ID": "12", "GITHUB_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----\nTOPSECRET\n-----END RSA PRIVATE KEY-----"}
    out = subprocess.run([sys.executable, "-m", "cli", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "not a PEM private key" in out.stderr and "TOPSECRET" not in out.stderr


def test_canceling_a_queued_session_leaves_no_job_behind(client, conn, settings):
    from rq.job import Job

    apply(conn, {"name": "a", "triggers": [gh(["pull_request"])]})
    fire(client)
    sid = client.get("/api/sessions").get_json()[0]["id"]
    assert conn.exists(Job.key_for(sid)) and conn.llen("rq:queue:routinely") == 1
    assert client.post(f"/api/sessions/{sid}/cancel").get_json() == {"id": sid, "result": "canceled"}
    assert not conn.exists(Job.key_for(sid)) and conn.llen("rq:queue:routinely") == 0
    got = client.get(f"/api/sessions/{sid}").get_json()
    assert got["status"] == "canceled" and got["finished_at"] and got["reason"] == "canceled before it started"
