"""`routinely up`: Redis (when REDIS_URL is unset), web, worker and scheduler in the foreground.

Ctrl-C or SIGTERM stops every process it started: workers first (running sessions get
ROUTINELY_SHUTDOWN_GRACE_SECONDS), Redis last. Its children run in process groups of their
own, so a terminal's Ctrl-C reaches `up` alone and each child is told once, by `up`; a
person's second Ctrl-C (or SIGQUIT) is passed to the workers as SIGQUIT: end sessions now. A process that dies — a worker, the
scheduler, web or the embedded Redis — is restarted with backoff (one line each); the rest
ride through meanwhile. One that fails as it first starts (a port in use, a wrong setting)
stops `up` with exit code 1 instead.
"""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import redis

from routinely.storage import keys
from routinely import sign_in
from routinely.config import SECRETS_KEY_FILE, ConfigError, Settings, decode_secrets_key, embedded_redis_url
from routinely.storage.store import connect
from workers.liveness import StopSignals

RESTART_FIRST, RESTART_MAX = 1.0, 30.0  # seconds before a crashed process is started again
RESTART_RESET = 60.0  # a process that ran this long restarts after RESTART_FIRST again
START_SECONDS = 30.0  # a process that exits with an error this soon after its first start is not restarted: `up` stops
STOP_MARGIN_SECONDS = 10.0  # past the sessions' grace: the worker's kill of their process groups


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
        stdout=subprocess.DEVNULL, process_group=0,  # Ctrl-C must not stop it before the workers wrote their outcomes
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


@dataclass
class Child:
    """One process `up` started and keeps running: restarted with backoff when it exits."""

    name: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    delay: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    signalled: bool = False

    def launch(self) -> None:
        self.started, self.restart_at, self.signalled = time.monotonic(), None, False
        try:
            self.proc = self.start()
        except ConfigError as exc:  # the embedded Redis did not come back: try again later
            print(f"routinely: {exc}", file=sys.stderr, flush=True)
            self.proc = None
            self._backoff(time.monotonic())

    def check(self, now: float) -> bool:
        """Restart it if it exited; False when it could not even start (a configuration problem:
        a port in use, a wrong setting), which stops `up`."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                self.launch()
            return True
        if self.proc is None or self.proc.poll() is None:
            return True
        if self.restarts == 0 and now - self.started < START_SECONDS and self.proc.returncode > 0:  # not killed: failed
            print(f"routinely: {self.name} exited with code {self.proc.returncode} as it started; stopping",
                  file=sys.stderr, flush=True)
            return False
        self._backoff(now)
        print(f"routinely: {self.name} exited with code {self.proc.returncode}; restarting it in {self.delay:g} s",
              file=sys.stderr, flush=True)
        return True

    def _backoff(self, now: float) -> None:
        # a process that ran a while gets a quick restart; one that keeps crashing, a slower one
        self.delay = RESTART_FIRST if now - self.started > RESTART_RESET else min(max(self.delay * 2, RESTART_FIRST), RESTART_MAX)
        self.restart_at = now + self.delay

    def signal_stop(self) -> None:
        """SIGTERM, once: a second one is a person's "end now" to a worker, never an echo of ours."""
        if self.proc is not None and self.proc.poll() is None and not self.signalled:
            self.signalled = True
            self.proc.terminate()

    def signal_now(self) -> None:
        """SIGQUIT: a worker ends its running sessions now (a person asked twice)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)

    def stop(self, timeout: float) -> None:
        """Signal it (if not yet) and wait up to `timeout`, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal_stop()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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


def secrets_key(data_dir: Path) -> bytes:
    """Make the secret store's key file (32 random bytes, base64, mode 0600) when there is none.

    `up` makes it when ROUTINELY_SECRETS_KEY is unset; every process reads it through Settings.
    Keep a copy elsewhere: without it the stored secrets cannot be opened."""
    path = data_dir / SECRETS_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        key = decode_secrets_key(path.read_text())
        if key is None:
            raise ConfigError(f"{path} is not a secrets key (32 bytes, base64)")
        return key
    key = os.urandom(32)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
    return key


WEB_READY_SECONDS = 60  # how long `up` waits for the web to answer before it prints the link anyway


def _wait_until_answering(host: str, port: int, web: "Child", stopping: Callable[[], bool]) -> bool:
    """Until the web accepts a connection (True), its process ends, `stopping()` or
    WEB_READY_SECONDS pass (False)."""
    end = time.monotonic() + WEB_READY_SECONDS
    while time.monotonic() < end and not stopping():
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            if web.proc is not None and web.proc.poll() is not None:
                return False
            time.sleep(0.05)
    return False


def up(host: str, port: int, workers: int) -> int:
    env_redis = os.environ.get("REDIS_URL")
    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = settings.admin_token or admin_token(settings.data_dir)
    if settings.secrets_key is None:  # the secret store's key, beside the admin token; every process reads it through Settings
        secrets_key(settings.data_dir)
    children: list[Child] = []
    if not env_redis:
        children.append(Child("redis", lambda: start_redis(settings.data_dir)))
        children[0].launch()
        if children[0].proc is None:
            return 1
    env = {**os.environ, "REDIS_URL": settings.redis_url, "ROUTINELY_DATA_DIR": str(settings.data_dir),
           "ROUTINELY_ADMIN_TOKEN": token}
    if not os.environ.get("PUBLIC_URL"):
        env["PUBLIC_URL"] = f"http://{host}:{port}"
    (settings.data_dir / "public_url").write_text(env["PUBLIC_URL"] + "\n")
    conf = str(Path(__file__).resolve().parent.parent / "app" / "gunicorn_conf.py")
    py = sys.executable
    commands = [
        ("web", [py, "-m", "gunicorn", "-c", conf, "--bind", f"{host}:{port}", "app:create_app()"]),
        *[(f"worker{i + 1}", [py, "-m", "cli", "worker"]) for i in range(workers)],
        ("scheduler", [py, "-m", "cli", "scheduler"]),
    ]
    for name, cmd in commands:
        # a process group of its own: only `up` signals it, once (a terminal's Ctrl-C would be a second)
        child = Child(name, lambda cmd=cmd: subprocess.Popen(cmd, env=env, process_group=0))
        child.launch()
        children.append(child)
    web = next(child for child in children if child.name == "web")
    print(f"routinely: up on {env['PUBLIC_URL']} (redis {settings.redis_url}); Ctrl-C stops", file=sys.stderr, flush=True)

    stopping = False
    signals = StopSignals()

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        if signals.kind(signum, time.monotonic()) == "now":  # a person's second Ctrl-C, or SIGQUIT
            os.write(2, b"routinely: ending running sessions now\n")
            for child in children:
                if child.name.startswith("worker"):
                    child.signal_now()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGQUIT, stop)
    # the link is printed once the web answers: clicked at once, it must not meet "connection refused"
    _wait_until_answering("127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]"), port, web, lambda: stopping)
    kept = "" if settings.admin_token else f"; the admin token is kept in {settings.data_dir / 'admin_token'}"
    try:
        link = sign_in.link(connect(settings), env["PUBLIC_URL"])
        print(f"routinely: sign in at {link} (once, within {keys.SIGN_IN_CODE_TTL // 60} min; "
              f"`routinely sign-in` prints another{kept})", file=sys.stderr, flush=True)
    except redis.RedisError:
        print(f"routinely: no sign-in link (Redis did not answer): `routinely sign-in` prints one{kept}",
              file=sys.stderr, flush=True)

    code = 0
    while not stopping:
        now = time.monotonic()
        if not all([child.check(now) for child in children]):
            code, stopping = 1, True
        time.sleep(0.2)
    # app processes first (workers give running sessions their grace), Redis last, so
    # workers can record what they were doing
    timeout = settings.shutdown_grace + STOP_MARGIN_SECONDS
    apps = [c for c in children if c.name != "redis"]
    for child in apps:
        child.signal_stop()
    for child in apps + [c for c in children if c.name == "redis"]:
        child.stop(timeout)
    return code
