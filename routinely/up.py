"""`routinely up`: Redis (when REDIS_URL is unset), web, worker and scheduler in the foreground.

Ctrl-C or SIGTERM stops every process it started; if one of them dies, the rest are
stopped too and `up` exits non-zero naming it.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from routinely.config import ConfigError, Settings, embedded_redis_url


def start_redis(data_dir: Path) -> subprocess.Popen:
    """A Redis of our own under ROUTINELY_DATA_DIR, on a unix socket (no port to collide with)."""
    binary = shutil.which("redis-server")
    if not binary:
        raise ConfigError("REDIS_URL is unset and redis-server is not installed: apt-get install redis-server, or set REDIS_URL")
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--dir", str(folder),
         "--appendonly", "yes", "--save", "", "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(embedded_redis_url(data_dir))
    for _ in range(250):
        if proc.poll() is not None:
            raise ConfigError(f"the local redis-server exited at start; see {folder / 'redis.log'}")
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.terminate()
    raise ConfigError(f"the local redis-server did not answer; see {folder / 'redis.log'}")


def admin_token(data_dir: Path) -> str:
    """The admin token kept in the data dir (mode 0600), made on first start.

    `up` uses it when ROUTINELY_ADMIN_TOKEN is unset: there is no open mode, loopback included.
    """
    path = data_dir / "admin_token"
    try:
        token = path.read_text().strip()
        if token:
            os.chmod(path, 0o600)
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def up(host: str, port: int, workers: int) -> int:
    env_redis = os.environ.get("REDIS_URL")
    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = settings.admin_token or admin_token(settings.data_dir)
    children: list[tuple[str, subprocess.Popen]] = []
    if not env_redis:
        children.append(("redis", start_redis(settings.data_dir)))
    env = {**os.environ, "REDIS_URL": settings.redis_url, "ROUTINELY_DATA_DIR": str(settings.data_dir),
           "ROUTINELY_ADMIN_TOKEN": token}
    if not os.environ.get("PUBLIC_URL"):
        env["PUBLIC_URL"] = f"http://{host}:{port}"
    (settings.data_dir / "public_url").write_text(env["PUBLIC_URL"] + "\n")
    conf = str(Path(__file__).resolve().parent.parent / "app" / "gunicorn_conf.py")
    py = sys.executable
    commands = [
        ("web", [py, "-m", "gunicorn", "-c", conf, "--bind", f"{host}:{port}", "app:create_app()"]),
        *[(f"worker{i + 1}", [py, "-m", "routinely.cli", "worker"]) for i in range(workers)],
        ("scheduler", [py, "-m", "routinely.cli", "scheduler"]),
    ]
    for name, cmd in commands:
        children.append((name, subprocess.Popen(cmd, env=env)))
    print(f"routinely: up on {env['PUBLIC_URL']} (redis {settings.redis_url}); Ctrl-C stops", file=sys.stderr, flush=True)
    kept = "" if settings.admin_token else f" (token kept in {settings.data_dir / 'admin_token'})"
    print(f"routinely: sign in at {env['PUBLIC_URL']}/login?token={token}{kept}", file=sys.stderr, flush=True)

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"routinely: {name} exited with code {proc.returncode}; stopping the rest", file=sys.stderr)
                code, stopping = 1, True
                break
        time.sleep(0.2)
    # app processes first, Redis last, so workers can record what they were doing
    for name, proc in reversed(children):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return code
