"""Test helpers: a throwaway redis-server, fixtures, real signatures."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis

from app.signature import sign
from routinely import catalog, jobs
from workers.sandbox import host

FIXTURES = Path(__file__).with_name("fixtures")
SECRET = "test-webhook-secret"
ADMIN_TOKEN = "test-admin-token-for-the-console-0123456789"  # at least 32 characters (routinely.config)


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")  # runs the probe agents (and the sandbox's launcher)
_NO_SANDBOX = host.problem(False, os.environ.get("PATH"))  # None: bwrap builds a sandbox here
needs_sandbox = pytest.mark.skipif(_NO_SANDBOX is not None, reason="this host cannot build the sandbox (bwrap, user namespaces)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="session users need the worker to run as root")
needs_root_sandbox = pytest.mark.skipif(_NO_SANDBOX is not None or os.geteuid() != 0,
                                        reason="needs root and a host that can build the sandbox")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn(app: str, env: dict[str, str], *extra: str, workers: int = 1) -> tuple[subprocess.Popen, int]:
    """gunicorn serving `app` as the Procfile runs it (app/gunicorn_conf.py), on a free port;
    returned once every worker is forked (one forked later would count as a process the
    test that saw it left behind)."""
    import sys

    port = free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(root / "app" / "gunicorn_conf.py"), *extra,
                             "--bind", f"127.0.0.1:{port}", app], env={**env, "WEB_CONCURRENCY": str(workers)},
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            if len(children.read_text().split()) == workers:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gunicorn did not start: " + proc.stderr.read().decode()[-500:])


class RedisServer:
    """A redis-server this test run starts, owns, flushes and stops.

    `persistent`: with an append-only file, so that `stop()` and `start()` again is a Redis
    restart that keeps its data (fault tests restart it under a running worker)."""

    def __init__(self, persistent: bool = False) -> None:
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (bash .ci/run does)")
        self.dir = tempfile.mkdtemp(prefix="routinely-redis-")
        self.port = free_port()
        self.persistent = persistent
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(250):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("the test redis-server did not start")

    def halt(self) -> None:
        """Stop the server (SIGTERM: it writes its file and exits); `start()` brings it back."""
        self.proc.terminate()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def delivery_headers(event: str, body: bytes, secret: str = SECRET, delivery: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body),
        "User-Agent": "GitHub-Hookshot/test",
    }


def redis_snapshot(conn: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type and content, to prove a refused request changed nothing —
    but the door's bounded record of refused deliveries (keys.REFUSALS), the one thing a
    refusal keeps by design (tests/test_refusals.py checks it)."""
    out = {}
    for key in conn.scan_iter(count=1000):
        if key == b"rly:refusals":
            continue
        kind = conn.type(key)
        if kind == b"string":
            out[key] = conn.get(key)
        elif kind == b"hash":
            out[key] = conn.hgetall(key)
        elif kind == b"list":
            out[key] = conn.lrange(key, 0, -1)
        elif kind == b"set":
            out[key] = conn.smembers(key)
        elif kind == b"zset":
            out[key] = conn.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out


ENV_KEYS_TO_CLEAR = [k for k in os.environ if k.startswith(("ROUTINELY_", "GITHUB_"))] + ["REDIS_URL", "PUBLIC_URL"]


class CuttingProxy:
    """A TCP proxy to Redis that can cut a connection in the middle of a command.

    mode "pass": forward everything; "cut": when a client sends a chunk containing
    `marker`, forward only half of it and drop both sides (Redis discards the partial
    command); "refuse": close new and existing connections at once.
    """

    def __init__(self, target_port: int, marker: bytes = b"EVAL") -> None:
        import threading

        self.target_port, self.marker, self.mode = target_port, marker, "pass"
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.cuts = 0
        self._conns: list[socket.socket] = []
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            self._threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            self._threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.mode == "refuse":
                    break
                if from_client and self.mode == "cut" and self.marker in data:
                    dst.sendall(data[: len(data) // 2])
                    self.cuts += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.server.close()
        for s in self._conns:
            try:
                s.close()
            except OSError:
                pass


def git(*args: str, cwd: Path | str | None = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


class Remotes:
    """A folder of bare repositories standing in for GitHub (GITHUB_GIT_URL=file://…)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def create(self, full_name: str, branch: str = "main", files: dict[str, str] | None = None, count: int = 0) -> Path:
        work = self.root / "_work" / full_name
        work.mkdir(parents=True)
        git("init", "-q", "-b", branch, cwd=work)
        for name, text in (files or {"README.md": f"# {full_name}\n"}).items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        for i in range(count):  # many files, for the workspace benchmark
            sub = work / "src" / f"d{i // 500}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{i}.txt").write_text(f"file {i}\n")
        git("add", "-A", cwd=work)
        git("commit", "-qm", "initial", cwd=work)
        bare = self.root / f"{full_name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "-q", "--bare", str(work), str(bare))
        return bare

    def refs(self, full_name: str) -> dict[str, str]:
        out = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=self.root / f"{full_name}.git")
        return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines())}


class Clock:
    """An injectable clock for Settings(clock=…): tests move time by setting .t."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def admin(client):
    """A Flask test client that presents the admin token (the API has no open mode)."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"
    return client


def unmount_under(base: Path) -> None:
    """Detach mounts a test's sessions left under `base` (a worker the test killed leaves
    its overlay; the next worker on the host would sweep it), so the folder can go."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mounted in sorted((m for m in mounts if m.startswith(f"{base}/")), reverse=True):
        subprocess.run(["umount", "-l", mounted], capture_output=True)


@contextlib.contextmanager
def reachable_folder(prefix: str, agents: tuple[str, ...] = ()) -> Iterator[Path]:
    """A folder any session user can traverse (pytest's tmp is root-only), with copies of
    the named test agents in `agents/`; on exit, what sessions mounted there is detached and
    the folder removed."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o711)
    if agents:
        (base / "agents").mkdir()
        for name in agents:
            shutil.copy(Path(__file__).with_name("agents") / name, base / "agents" / name)
            (base / "agents" / name).chmod(0o644)
        (base / "agents").chmod(0o755)
    try:
        yield base
    finally:
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # the browser tests' (bash .ci/run installs it)


class PrivateHost:
    """A web server on a private address of a network namespace this test makes (a veth pair
    to the host), for what loopback can no longer stand in for: the egress proxy never opens
    loopback, and opens a private range only to an IP entry in allow_hosts. Answers every GET
    with `greeting`. Needs root and iproute2; `close()` removes the namespace and the server."""

    def __init__(self, greeting: bytes = b"hello-through-the-proxy") -> None:
        import random

        self.name = f"rly-{os.getpid()}-{random.randrange(1 << 20)}"
        net = random.randrange(1, 250)
        self.host_ip, self.ip = f"10.213.{net}.1", f"10.213.{net}.2"
        outside, inside = f"rv{random.randrange(1 << 24):x}", "eth-private"
        self._steps = []
        try:
            for argv in (["ip", "netns", "add", self.name],
                         ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", self.name],
                         ["ip", "addr", "add", f"{self.host_ip}/30", "dev", outside],
                         ["ip", "link", "set", outside, "up"],
                         ["ip", "-n", self.name, "addr", "add", f"{self.ip}/30", "dev", inside],
                         ["ip", "-n", self.name, "link", "set", inside, "up"],
                         ["ip", "-n", self.name, "link", "set", "lo", "up"]):
                subprocess.run(argv, check=True, capture_output=True, timeout=30)
            self._outside = outside
            server = ("import http.server, sys\n"
                      "class H(http.server.BaseHTTPRequestHandler):\n"
                      "    def do_GET(self):\n"
                      f"        self.send_response(200); self.send_header('Content-Length', '{len(greeting)}'); self.end_headers()\n"
                      f"        self.wfile.write({greeting!r})\n"
                      "    def log_message(self, *a): pass\n"
                      f"s = http.server.HTTPServer(('{self.ip}', 0), H)\n"
                      "print(s.server_address[1], flush=True)\n"
                      "s.serve_forever()\n")
            self.server = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", server],
                                           stdout=subprocess.PIPE, text=True)
            self.port = int(self.server.stdout.readline())
        except Exception:
            self.close()
            raise
        self.address = f"{self.ip}:{self.port}"

    def close(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)  # takes the veth pair along


def proc_status(field: str, pid: int | str = "self") -> int:
    """A figure of a process (this one, where it serves a door: the worker) from
    /proc/PID/status: `Threads` as a count, `VmRSS`/`VmHWM` in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak() -> int:
    """Start this process's VmHWM (peak RSS) again from now; returns VmRSS in kB."""
    Path("/proc/self/clear_refs").write_text("5")
    return proc_status("VmRSS")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, every: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` passes (a wait that follows a condition)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


@contextlib.contextmanager
def routinely_up(redis_url: str, tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """`routinely up` (one web process, one worker) on a free port against `redis_url`: yields
    the port, its data dir and its first two stderr lines (up on…, sign in at…); stopped after."""
    port = free_port()
    data = tmp_path / "data"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_url, "ROUTINELY_DATA_DIR": str(data),
           "WEB_CONCURRENCY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "--port", str(port), "--workers", "1"],
                            env=env, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        yield port, data, [proc.stderr.readline(), proc.stderr.readline()]
    finally:
        proc.terminate()
        proc.wait(30)


REPO = "Codertocat/Hello-World"


# a catalog of routines on REPO for one account, and the pieces of a github trigger and a signed delivery
def apply(conn, *routines, account=None):
    account = account or {"name": "alice", "plan": "enterprise", "rate_limit": {"events": 1000, "per_seconds": 3600}}
    full = []
    for r in routines:
        full.append({"account": "alice", "prompt": "do it", "repositories": [REPO],
                     "rate_limit": {"events": 1000, "per_seconds": 3600}, **r})
    catalog.apply(conn, {"accounts": [account], "routines": full}, time.time())


def gh(events, *filters):
    return {"github": {"events": events, "filters": list(filters)}}


def post(client, event, payload, **kw):
    body = kw.pop("body", None) or body_of(payload)
    headers = delivery_headers(event, body, **kw)
    return client.post("/webhooks/github", data=body, headers=headers), headers


def queued_ids(conn):
    return [j.decode() for j in conn.lrange(jobs.queue_key("routinely"), 0, -1)]


# -- running queued sessions: in this process (most tests), or as `routinely worker` processes
# (the tests of what a process boundary means: signals, SIGKILL, a worker's start-up checks)
@contextlib.contextmanager
def _worker_environment(env: dict[str, str]) -> Iterator[None]:
    """This process as a worker started with `env` would be, for as long as it runs: os.environ
    (the runner reads ROUTINELY_AGENT_ENV's names and connectors' ${VARS} from it) and the
    stop signals the worker installs; both restored after."""
    import signal

    from workers.run import Runtime

    saved_env, saved_signals = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT,
                                                                                  signal.SIGQUIT)}
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        Runtime._current = None


def run_sessions(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    """Runs every queued session to its end in this process, as `routinely worker --burst` run
    with `env` (plus `extra`) would: the same code (workers.worker.run), without a process and
    its ~1.5 s of imports. Returns what the worker printed, as burst_worker() does; a worker
    that exits non-zero fails the test."""
    import io

    from routinely.config import Settings
    from workers import worker

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _worker_environment({**env, **extra}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            worker.run(Settings.from_env(), burst=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            print(exc.code, file=sys.stderr) if not isinstance(exc.code, int) else None
    done = subprocess.CompletedProcess(["routinely", "worker", "--burst"], code, out.getvalue(), err.getvalue())
    assert done.returncode == 0, done.stderr
    return done


def worker_command(burst: bool = True) -> list[str]:
    return [sys.executable, "-m", "cli", "worker", *(["--burst"] if burst else [])]


def burst_worker(env: dict[str, str], check: bool = True, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
    """`routinely worker --burst` as a process of its own, run to its end: for the tests of what
    only a process shows (its exit, its start-up refusals, its memory); run_sessions otherwise."""
    done = subprocess.run(worker_command(), env={**env, **extra}, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr
    return done
