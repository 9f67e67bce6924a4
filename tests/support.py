"""Test helpers: a throwaway redis-server, fixtures, real signatures."""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import pytest
import redis

from app.signature import sign
from routinely.routines import api_tokens, catalog
from routinely.storage import jobs
from routinely.records import session_log
from routinely.config import Settings
from workers.sandbox import host

if TYPE_CHECKING:
    from flask.testing import FlaskClient
    from mcp.types import CallToolResult, Tool
    from werkzeug.test import TestResponse

    from routinely.routine_file import Routine

ROOT_DIR = Path(__file__).resolve().parent.parent  # the checkout
FIXTURES = Path(__file__).with_name("fixtures")
AGENTS_DIR = Path(__file__).with_name("agents")  # the probe and stand-in agents
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
    root = ROOT_DIR
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
        self.refused = 0  # connections closed at once in "refuse" mode: a client's tries
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
                self.refused += 1
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


def run_in_sandbox(box: Any, argv: list[str], env: dict[str, str], cwd: Path, home: Path,
                   timeout: float = 60) -> subprocess.CompletedProcess:
    """Run one command in a workers.sandbox.Sandbox to its end, as its session user when it has
    one, and close the door descriptors the command was given (they are the caller's to close)."""
    cmd = box.command(argv, env, cwd, home)
    ids = {"user": cmd.user, "group": cmd.user, "extra_groups": []} if cmd.user is not None else {}
    try:
        return subprocess.run(cmd.argv, env=cmd.env, cwd=cmd.cwd, pass_fds=cmd.pass_fds, capture_output=True,
                              text=True, timeout=timeout, **ids)
    finally:
        for fd in cmd.pass_fds:
            os.close(fd)


def one_commit_remote(base: Path) -> tuple[Path, Path]:
    """A bare repository (base/remote.git) with one commit on main, and the clone it came from
    (base/work): a remote for a push door to forward to."""
    remote, work = base / "remote.git", base / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "f").write_text("f\n")
    git("add", "f", cwd=work)
    git("commit", "-qm", "f", cwd=work)
    git("clone", "-q", "--bare", str(work), str(remote))
    return remote, work


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
            shutil.copy(AGENTS_DIR / name, base / "agents" / name)
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
        # a /30 no other test process holds now (they run side by side under `pytest -n`)
        taken = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=30).stdout
        net = random.choice([n for n in range(1, 250) if f" 10.213.{n}.1/" not in taken])
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
                            env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT_DIR)
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


# -- sessions run by worker processes the tests start, signal and kill (tests/system)
WORKER_SENTINEL = "worker-only-sentinel-6d1f"  # in the worker's env only: a session that shows it saw the worker's env
SLEEPER = f"{sys.executable} {AGENTS_DIR / 'sleeper.py'}"  # an agent that sleeps until stopped, with a child of its own


def apply_reporting_routine(conn: redis.Redis, tmp_path: Path, extra_connectors: dict[str, Any] | None = None,
                            **routine: Any) -> None:
    """Applies alice's routine `r` on octo/api (api and pull_request triggers, two connectors) whose agent writes its
    report to tmp_path/report.json: the runner's tests read what a session saw from there."""
    spec = {"name": "r", "account": "alice", "prompt": "Follow REVIEW.md.", "repositories": ["octo/api"],
            "triggers": [{"api": {}}, {"github": {"events": ["pull_request"]}}]}
    spec.update(routine)
    spec.setdefault("environment", {})
    spec["environment"].setdefault("env", {})
    spec["environment"]["env"].setdefault("REPORT", str(tmp_path / "report.json"))
    catalog.apply(conn, {
        "accounts": [{"name": "alice", "plan": "enterprise"}],
        "connectors": {"slack": {"type": "http", "url": "https://mcp.example.com/slack",
                                 "headers": {"Authorization": "Bearer ${SLACK_TOKEN}"}},
                       "linear": {"command": "npx", "args": ["-y", "linear-mcp"], "env": {"K": "${UNSET_VAR}"}},
                       **(extra_connectors or {})},
        "routines": [spec],
    }, time.time())


def log_text(conn: redis.Redis, sid: str) -> str:
    """A session's log as one text, for tests that look for a line in it."""
    return "\n".join(session_log.read(conn, sid)[0])


def start_worker(env: dict[str, str], **extra: str) -> subprocess.Popen:
    """`routinely worker` (not burst) as a process of its own, output dropped: tests cancel, signal or kill it."""
    return subprocess.Popen(worker_command(burst=False), env={**env, **extra},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`routinely ARGS` (a worker, `up`) as a process of its own, its stderr in `log`: fault tests read what it said."""
    return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM (unless it already ended) and its exit code: how a supervisor stops a worker or `up`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not): an agent or its child outliving its session is a leak."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def host_processes_with(marker: str) -> list[int]:
    """The host's processes whose command line holds `marker`: what a hostile session left running."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                    found.append(int(pid))
            except OSError:
                pass
    return found


def settings_for(url: str, tmp_path: Path) -> Settings:
    """Settings for a Redis the test owns (own_redis), to read sessions a worker process ran against it."""
    return Settings(redis_url=url, data_dir=tmp_path / "data", public_url="http://routinely.test")


def base_env(tmp_path: Path, remotes: Remotes, **extra: str) -> dict[str, str]:
    """The environment of a worker or `up` a fault test starts (Redis in `extra`): unsandboxed, the agents write
    their reports outside their workspace."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
            "GITHUB_GIT_URL": remotes.url, "ROUTINELY_DATA_DIR": str(tmp_path / "data"),
            "PUBLIC_URL": "http://routinely.test", "ROUTINELY_SESSION_USERS": "off",
            # these agents run the worker's Python and write reports outside their workspace
            "ROUTINELY_SANDBOX": "off", **extra}


def assert_nothing_left(settings: Settings, sid: str, *pids: int) -> None:
    """No process, workspace or relay of a session survives it, however it ended (the fault tests' every check)."""
    from workers import leftovers

    for pid in pids:
        assert wait_for(lambda: not alive(pid), timeout=10)
    assert leftovers.session_processes(sid, settings.data_dir / "workspaces" / sid) == []
    assert not (settings.data_dir / "workspaces" / sid).exists()
    assert not (settings.data_dir / "relays" / sid).exists()


def assert_job_settled(conn: redis.Redis, settings: Settings, sid: str) -> None:
    """A session's RQ job ended and left the started registry: a stopped worker holds no job forever."""
    from rq.job import Job
    from rq.registry import StartedJobRegistry

    assert sid not in StartedJobRegistry(settings.queue_name, connection=conn, serializer=jobs.SERIALIZER).get_job_ids()
    assert Job.fetch(sid, connection=conn, serializer=jobs.SERIALIZER).get_status() in ("finished", "failed")


# -- the API trigger: POST /v1/claude_code/routines/{trigger_id}/fire
FIRE_PATH = "/v1/claude_code/routines/{trigger_id}/fire"
FIRE_BETA = "experimental-cc-routine-2026-04-01"


def apply_api_routines(conn: redis.Redis, **routine: Any) -> tuple[tuple[str, str], tuple[str, str]]:
    """Applies ops' routines `alerts` (with `routine`'s changes) and `other`, both with an api trigger, and returns
    each one's (trigger id, token): the fire tests need a token of another routine too."""
    spec = {"name": "alerts", "account": "ops", "prompt": "Triage the alert.", "triggers": [{"api": {}}], **routine}
    catalog.apply(conn, {"accounts": [{"name": "ops", "plan": "enterprise"}],
                         "routines": [spec, {"name": "other", "account": "ops", "prompt": "p", "triggers": [{"api": {}}]}]},
                  time.time())
    cat = catalog.load(conn)
    return api_tokens.create(conn, cat.find("alerts")), api_tokens.create(conn, cat.find("other"))


def fire_headers(token: str, **extra: str | None) -> dict[str, str]:
    """The headers of a fire request as the hosted service's clients send them; `extra` adds, or drops with None."""
    h = {"Authorization": f"Bearer {token}", "anthropic-version": "2023-06-01", "anthropic-beta": FIRE_BETA,
         "Content-Type": "application/json"}
    h.update(extra)
    return {k: v for k, v in h.items() if v is not None}


def fire(client: FlaskClient, trigger_id: str, token: str, body: bytes = b'{"text": "x"}',
         **extra: str | None) -> TestResponse:
    """Fires a routine through its API trigger; the answer is checked against the OpenAPI document."""
    from tests import openapi_check  # it imports this module

    resp = client.post(f"/v1/claude_code/routines/{trigger_id}/fire", data=body, headers=fire_headers(token, **extra))
    openapi_check.check(resp, FIRE_PATH, "post")
    return resp


# -- who may fire: /fix comments on OCTO_REPO (tests/system/test_triggers.py, test_role_check.py)
OCTO_REPO = "octo/api"
FIX_ROUTINE = {"name": "fix", "triggers": [{"github": {"events": ["issue_comment.created"], "command": "fix",
                                                        "roles": ["admin", "maintain", "write"]}}]}


def apply_octo_routines(conn: redis.Redis, *routines: dict[str, Any]) -> None:
    """Applies alice's `routines` on OCTO_REPO, each prompt naming its routine: the role tests' catalog."""
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "enterprise"}], "routines": [
        {"account": "alice", "prompt": f"Routine {r['name']}.", "repositories": [OCTO_REPO], **r} for r in routines]},
        time.time())


def comment_by(login: str, body: str, sender: dict[str, Any] | None = None) -> dict[str, Any]:
    """An issue_comment.created payload on OCTO_REPO by `login`: whose comment it is decides whether /fix fires."""
    payload = fixture("issue_comment.created.installation.json")
    payload["repository"]["full_name"] = OCTO_REPO
    payload["comment"]["body"] = body
    payload["comment"]["user"]["login"] = login
    payload["comment"]["author_association"] = "NONE"
    payload["sender"] = sender or {**payload["sender"], "login": login}
    return payload


def post_delivery(client: FlaskClient, event: str, payload: dict[str, Any]) -> TestResponse:
    """Posts `payload` as a signed delivery and returns the answer alone (post() returns its headers too)."""
    body = body_of(payload)
    return client.post("/webhooks/github", data=body, headers=delivery_headers(event, body))


# -- the github connector, spoken to as a session's agent would (its MCP client imports lazily: half a second)
def connector_routine(**github: Any) -> Routine:
    """A routine on octo/api and octo/sdk with this `github` block: a connector's policy comes from it."""
    from routinely.routine_file import Routine

    return Routine.model_validate({"name": "r", "account": "a", "prompt": "p", "repositories": ["octo/api", "octo/sdk"],
                                   "triggers": [{"api": {}}], **({"github": github} if github else {})})


class ConnectorSession:
    """A connector as the runner starts it, with a push guard stand-in listing pushed branches: its tools are called
    through the real `mcp` client over its unix socket."""

    def __init__(self, conn: redis.Redis, settings: Settings, sid: str = "sess_a",
                 pushed: Iterable[tuple[str, str]] = (), **github: Any) -> None:
        from routinely.github.github_auth import InstallationTokens
        from workers.connector import Connector, Policy

        self.dir = tempfile.mkdtemp(prefix="rly-conn-")
        self.sock = str(Path(self.dir) / "github.sock")
        self.pushed = set(pushed)
        self.lines: list[str] = []
        self.conn, self.sid = conn, sid

        def log(line: str) -> None:
            self.lines.append(line)
            session_log.append(conn, sid, line)

        self.connector = Connector(sid, Policy.of(connector_routine(**github)), self.sock, conn, settings,
                                   InstallationTokens(settings), lambda repo, branch: (repo, branch) in self.pushed,
                                   log).start()

    async def _calls(self, calls: list[tuple[str, dict[str, Any]]] | None, token: str | None) -> Any:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=self.sock), headers=headers) as http:
            async with Client(streamable_http_client("http://127.0.0.1/mcp", http_client=http)) as client:
                if calls is None:
                    return (await client.list_tools()).tools
                return [await client.call_tool(name, args) for name, args in calls]

    def call(self, *calls: tuple[str, dict[str, Any]], token: str | None = "own") -> list[CallToolResult]:
        import asyncio

        return asyncio.run(self._calls(list(calls), self.connector.token if token == "own" else token))

    def concurrently(self, name: str, args_list: list[dict[str, Any]]) -> list[CallToolResult]:
        import asyncio

        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def go():
            headers = {"Authorization": f"Bearer {self.connector.token}"}
            async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=self.sock), headers=headers) as http:
                async with Client(streamable_http_client("http://127.0.0.1/mcp", http_client=http)) as client:
                    return await asyncio.gather(*[client.call_tool(name, args) for args in args_list])
        return asyncio.run(go())

    def tools(self) -> list[Tool]:
        import asyncio

        return asyncio.run(self._calls(None, self.connector.token))

    def status(self, token: str | None) -> int:
        import httpx2

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx2.Client(transport=httpx2.HTTPTransport(uds=self.sock)) as http:
            return http.post("http://127.0.0.1/mcp", headers={**headers, "Accept": "application/json, text/event-stream"},
                             json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).status_code

    def close(self) -> None:
        self.connector.close()


def tool_text(result: CallToolResult) -> str:
    """The text a connector's tool answered: what the agent reads, refusals included."""
    return result.content[0].text


# -- the egress proxy's tests' network: upstreams on this process's loopback stand for PRIVATE (tests/unit)
PRIVATE = "10.99.0.1"  # what the tests' upstreams stand for: a private host the routine names


class Recorder(http.server.BaseHTTPRequestHandler):
    """An upstream that answers each request with its method, path and body and records it in `seen` (the upstream
    fixture empties it): what the proxy let through, as the upstream saw it."""
    protocol_version = "HTTP/1.1"  # keeps connections alive
    seen: list = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding") == "chunked":
            while (size := int(self.rfile.readline().strip(), 16)):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        type(self).seen.append((self.requestline, dict(self.headers), body, self.client_address[1]))
        reply = f"{self.command} {self.path} {body.decode()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def log_message(self, *a: Any) -> None:
        pass


def private_to_loopback(address: Any, port: int, timeout: float | None) -> socket.socket:
    """The proxy's `connect` in tests: PRIVATE is this process's loopback, nothing else is reachable (nothing opens
    loopback itself)."""
    if str(address) != PRIVATE:
        raise ConnectionRefusedError(111, "the test reaches nothing else")
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def dial(proxy: Any) -> socket.socket:
    """A connection to an egress proxy's unix socket, as a session's bridge opens one."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(proxy.sock)
    s.settimeout(10)
    return s


def read_response(f: Any) -> tuple[str, bytes]:
    """An HTTP response's status line and body from a socket's file: the proxy's answer, or the upstream's through it."""
    status = f.readline().decode().strip()
    headers = {}
    while (line := f.readline().decode().strip()):
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, f.read(int(headers.get("content-length", 0)))


# a prompt of two lines, quotes and an indented list: the console shows it as the agent got it, and as a YAML block
MULTILINE_PROMPT = "Review the pull request.\nIt's a two-line prompt: keep the 'quotes'.\n\n  - and an indented list\n"
