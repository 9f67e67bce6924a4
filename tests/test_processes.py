"""The processes' doors: the loopback rule without an admin token, one-line start-up errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def gunicorn(bind: str, redis_url: str, tmp_path, **extra) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_url, "ROUTINELY_DATA_DIR": str(tmp_path), **extra}
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"), "--bind", bind,
                           "app:create_app()"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_web_refuses_a_public_bind_without_an_admin_token(redis_server, tmp_path):
    done = gunicorn(f"0.0.0.0:{free_port()}", redis_server.url, tmp_path)
    assert done.returncode != 0
    assert "routinely: refusing to listen on 0.0.0.0 without ROUTINELY_ADMIN_TOKEN: set it, or bind to 127.0.0.1" in done.stderr


def test_web_stops_on_a_wrong_setting_with_one_line(redis_server, tmp_path):
    done = gunicorn(f"127.0.0.1:{free_port()}", redis_server.url, tmp_path, PUBLIC_URL="not a url")
    assert done.returncode != 0 and "routinely: PUBLIC_URL must be an http(s):// URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_web_stops_on_a_wrong_worker_count_or_log_level_with_one_line(redis_server, tmp_path):
    for name, value, line in [
        ("WEB_CONCURRENCY", "0", "routinely: WEB_CONCURRENCY must be a whole number of web workers, 1 or more (it is '0')"),
        ("ROUTINELY_LOG_LEVEL", "loud", "routinely: ROUTINELY_LOG_LEVEL must be one of debug, info, warning, error, critical"),
    ]:  # (a non-number or a negative one gunicorn refuses itself: it reads WEB_CONCURRENCY first)
        done = gunicorn(f"127.0.0.1:{free_port()}", redis_server.url, tmp_path, **{name: value})
        assert done.returncode != 0 and line in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_up_refuses_a_public_host_without_an_admin_token(redis_server, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_server.url, "ROUTINELY_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "routinely.cli", "up", "--host", "0.0.0.0", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == "routinely: refusing to listen on 0.0.0.0 without ROUTINELY_ADMIN_TOKEN: set it, or use 127.0.0.1\n"
