"""Session isolation: network none and allowlist, separate users, the worker's environment.

Skipped only where the kernel forbids the mechanism (and the skip says so).
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from routinely import catalog, session_log, sessions
from routinely.cli import fire_one
from routinely.config import Settings
from routinely.start import Firing
from tests.support import free_port
from workers.sandbox import netns_prefix

SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
SENTINEL = "worker-secret-sentinel-91c2"

needs_netns = pytest.mark.skipif(netns_prefix() is None, reason="this kernel forbids network namespaces (unshare --net): network none/allowlist cannot be tested here")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="session users need the worker to run as root")


@pytest.fixture
def world(tmp_path):
    """A data dir and agent copy that any session user can reach (pytest's tmp is root-only)."""
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3 for the probe agent")
    base = Path(tempfile.mkdtemp(prefix="rly-iso-"))
    base.chmod(0o711)
    agents = base / "agents"
    agents.mkdir()
    shutil.copy(Path(__file__).with_name("agents") / "probe.py", agents / "probe.py")
    agents.chmod(0o755)
    (agents / "probe.py").chmod(0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


class Listener:
    """A TCP greeter, a UDP echo and an HTTP server on loopback, as targets."""

    def __init__(self) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.tcp_port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]

        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"hello through the proxy")

            def log_message(self, *a):
                pass

        # 127.0.0.2 and .3: loopback too, but not in the session's NO_PROXY (localhost stays in-namespace)
        self.http = socketserver.ThreadingTCPServer(("127.0.0.2", 0), Hello)
        self.http.daemon_threads = True
        self.http_port = self.http.server_address[1]
        self.other = socketserver.ThreadingTCPServer(("127.0.0.3", 0), Hello)
        self.other.daemon_threads = True
        self.other_port = self.other.server_address[1]
        threading.Thread(target=self.other.serve_forever, daemon=True).start()
        threading.Thread(target=self._tcp, daemon=True).start()
        threading.Thread(target=self._udp, daemon=True).start()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _tcp(self):
        while True:
            try:
                c, _ = self.tcp.accept()
            except OSError:
                return
            c.sendall(b"hello")
            c.close()

    def _udp(self):
        while True:
            try:
                data, addr = self.udp.recvfrom(64)
            except OSError:
                return
            self.udp.sendto(b"pong", addr)

    def close(self):
        self.tcp.close()
        self.udp.close()
        self.http.shutdown()
        self.other.shutdown()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def env_for(redis_server, world, users="off", **extra):
    return {"PATH": os.environ["PATH"], "HOME": str(world), "REDIS_URL": redis_server.url,
            "ROUTINELY_DATA_DIR": str(world / "data"), "ROUTINELY_AGENT": f"{SYSTEM_PYTHON} {world / 'agents' / 'probe.py'}",
            "ROUTINELY_SESSION_USERS": users, "WORKER_SENTINEL": SENTINEL, **extra}


def apply(conn, network="full", allow=None, env=None, name="probe"):
    environment = {"network": network, "env": env or {}}
    if allow:
        environment["allow_hosts"] = allow
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        {"name": name, "account": "a", "prompt": "probe", "triggers": [{"api": {}}], "environment": environment}]}, time.time())


def run(conn, settings, env, workers=1):
    made = fire_one(settings, conn, "probe", Firing(kind="manual"))
    procs = [subprocess.Popen([sys.executable, "-m", "routinely.cli", "worker", "--burst"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(workers)]
    for p in procs:
        p.wait(120)
    return made["id"]


def probe_of(conn, sid):
    lines = session_log.read(conn, sid)[0]
    found = [l for l in lines if l.startswith("PROBE ")]
    assert found, "\n".join(lines)
    return json.loads(found[0][6:])


@needs_netns
def test_network_none_reaches_nothing_while_full_reaches_the_listener(conn, settings, redis_server, world, listener):
    probes = {"PROBE_TCP": f"127.0.0.1:{listener.tcp_port}", "PROBE_UDP": f"127.0.0.1:{listener.udp_port}",
              "PROBE_NAME": "localhost-probe.invalid"}
    apply(conn, "full", env=probes)
    full = probe_of(conn, run(conn, settings, env_for(redis_server, world)))
    assert full["tcp"] == {"ok": True, "value": "hello"} and full["udp"] == {"ok": True, "value": "pong"}  # the control
    apply(conn, "none", env=probes)
    sid = run(conn, settings, env_for(redis_server, world))
    none = probe_of(conn, sid)
    assert none["tcp"]["ok"] is False and none["udp"]["ok"] is False and none["resolve"]["ok"] is False
    assert sessions.get(conn, settings, sid)["status"] == "succeeded"


@needs_netns
def test_allowlist_reaches_allowed_hosts_through_the_proxy_only(conn, settings, redis_server, world, listener):
    p, q = listener.http_port, listener.other_port
    apply(conn, "allowlist", allow=["127.0.0.2"], env={
        "PROBE_URLS": f"http://127.0.0.2:{p}/ http://127.0.0.3:{q}/",
        "PROBE_CONNECT": f"127.0.0.2:{p}",
        "PROBE_TCP": f"127.0.0.2:{p}",
    })
    sid = run(conn, settings, env_for(redis_server, world))
    got = probe_of(conn, sid)
    assert got["url0"] == {"ok": True, "value": "hello through the proxy"}  # allowed host, via HTTP_PROXY
    assert got["url1"]["ok"] is False  # 127.0.0.3 is not in allow_hosts: 403
    assert got["connect"] == {"ok": True, "value": "hello through the proxy"}  # CONNECT tunnel to an allowed host
    assert got["tcp"]["ok"] is False  # a direct socket, even to the allowed host, has no route out
    assert got["env"]["HTTPS_PROXY"].startswith("http://127.0.0.1:")
    assert f"routinely: blocked egress to 127.0.0.3:{q} (not in allow_hosts)" in "\n".join(session_log.read(conn, sid)[0])
    # the control: without the namespace the same direct socket gets through
    apply(conn, "full", env={"PROBE_TCP": f"127.0.0.2:{p}"})
    assert probe_of(conn, run(conn, settings, env_for(redis_server, world)))["tcp"]["ok"] is True


def test_allow_host_patterns():
    from workers.sandbox.egress import host_allowed

    allow = ["api.github.com", "*.pypi.org", "files.example.com:8443"]
    assert host_allowed("API.GitHub.com", 443, allow)
    assert host_allowed("files.pypi.org", 443, allow) and not host_allowed("pypi.org", 443, allow)
    assert not host_allowed("evilpypi.org", 443, allow)
    assert host_allowed("files.example.com", 8443, allow) and not host_allowed("files.example.com", 443, allow)
    assert not host_allowed("github.com", 443, allow)


@needs_root
@needs_netns
def test_two_concurrent_sessions_cannot_see_each_other_or_the_worker(conn, settings, redis_server, world):
    peers = world / "peers"
    apply(conn, "none", env={"PEERS_FILE": str(peers)})
    first = fire_one(settings, conn, "probe", Firing(kind="manual"))["id"]
    second = fire_one(settings, conn, "probe", Firing(kind="manual"))["id"]
    peers.write_text(f"{first} {second}")
    peers.chmod(0o644)
    env = env_for(redis_server, world, users="on", ROUTINELY_KEEP_WORKSPACES="1")
    procs = [subprocess.Popen([sys.executable, "-m", "routinely.cli", "worker", "--burst"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    for p in procs:
        p.wait(120)
    a, b = probe_of(conn, first), probe_of(conn, second)
    assert a["uid"] != b["uid"] and a["uid"] >= 200_000 and b["uid"] >= 200_000
    for got in (a, b):
        for attempt in ("list_workspaces", "read_other", "write_other", "list_data", "other_relays", "worker_environ"):
            assert got[attempt]["ok"] is False and got[attempt]["error"] == "PermissionError", (attempt, got[attempt])
        assert SENTINEL not in json.dumps(got)
        assert got["env"]["HOME"].endswith("/.home")
    ws = world / "data" / "workspaces"
    for sid, got in ((first, a), (second, b)):
        secret = ws / sid / "secret.txt"
        assert secret.read_text() == f"secret of {sid}"  # the control: the files were there to find
        assert secret.stat().st_uid == got["uid"]
        assert not (ws / sid / "planted.txt").exists()
        assert stat.S_IMODE((ws / sid).stat().st_mode) == 0o700
    assert stat.S_IMODE(ws.stat().st_mode) == 0o711


@needs_root
def test_the_session_user_can_push_through_the_guard(conn, settings, redis_server, world, tmp_path):
    from tests.support import Remotes

    remotes_root = world / "github"
    remotes_root.mkdir()
    remotes = Remotes(remotes_root)
    remotes.create("octo/api")
    script = world / "agents" / "push.sh"
    script.write_text("cd $ROUTINELY_REPOS && echo x > f && git add f && git commit -qm x && git push -q origin HEAD:claude/x && "
                      "git push -q origin HEAD:main; echo pushed\n")
    script.chmod(0o755)
    catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [
        {"name": "probe", "account": "a", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}]}]}, time.time())
    env = env_for(redis_server, world, users="on", GITHUB_GIT_URL=remotes.url, ROUTINELY_AGENT=f"sh {script}")
    sid = run(conn, settings, env)
    log = "\n".join(session_log.read(conn, sid)[0])
    assert "refs/heads/claude/x" in remotes.refs("octo/api"), log
    assert "push to refs/heads/main refused" in log
    assert sessions.get(conn, settings, sid)["status"] == "succeeded"


def test_a_host_that_cannot_enforce_the_policy_fails_closed(conn, settings, redis_server, world, tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with everything a session needs but unshare
    bin_dir.mkdir()
    for tool in ("git", "bash", "sh", "env", "cat", "true"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    apply(conn, "none")
    sid = run(conn, settings, env_for(redis_server, world, PATH=str(bin_dir)))
    got = sessions.get(conn, settings, sid)
    assert got["status"] == "failed"
    log = "\n".join(session_log.read(conn, sid)[0])
    assert "environment.network: none needs network namespaces (unshare --net), which this host does not allow" in log
    assert "PROBE" not in log  # the agent never ran


@needs_root
def test_a_data_dir_session_users_cannot_enter_fails_with_what_to_set(conn, settings, redis_server, world, tmp_path):
    apply(conn, "full")
    env = env_for(redis_server, world, users="on", ROUTINELY_DATA_DIR=str(tmp_path / "data"))  # under a 0700 folder
    sid = run(conn, settings, env)
    assert sessions.get(conn, settings, sid)["status"] == "failed"
    assert "which session users cannot enter: set ROUTINELY_DATA_DIR" in "\n".join(session_log.read(conn, sid)[0])
