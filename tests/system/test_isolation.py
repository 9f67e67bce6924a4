"""Session isolation with the real sandbox (bwrap) and a probe agent: what a session can see,
reach and leave behind, under every network policy.

Traffic goes only to loopback listeners this test opens (and the test's own Redis and app);
the sandbox's fresh network namespace has nothing else.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from routinely.routines import catalog
from routinely.records import session_log, sessions
from routinely.config import Settings
from routinely.firing.start import Firing, fire_one
from tests.support import (SYSTEM_PYTHON, PrivateHost, host_processes_with, needs_root, needs_sandbox, reachable_folder,
                           run_sessions, wait_for, worker_command)

SENTINEL = "worker-secret-sentinel-91c2"

pytestmark = needs_sandbox


@pytest.fixture
def world(tmp_path):
    """A data dir and agent copy that any session user can reach (pytest's tmp is root-only)."""
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3 for the probe agent")
    with reachable_folder("rly-iso-", agents=("probe.py",)) as base:
        yield base


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "23")
        self.end_headers()
        self.wfile.write(b"hello through the proxy")

    def log_message(self, *a):
        pass


class Listener:
    """Targets on the host's loopback: a TCP greeter on 127.0.0.1 and [::1], a UDP echo,
    and HTTP servers on 127.0.0.2 (the routine's fake host) and 127.0.0.3 (not allowed)."""

    def __init__(self) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.tcp_port = self.tcp.getsockname()[1]
        self.tcp6 = socket.socket(socket.AF_INET6)
        self.tcp6.bind(("::1", 0))
        self.tcp6.listen(16)
        self.tcp6_port = self.tcp6.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        self.http = socketserver.ThreadingTCPServer(("127.0.0.2", 0), Hello)
        self.other = socketserver.ThreadingTCPServer(("127.0.0.3", 0), Hello)
        self.http_port, self.other_port = self.http.server_address[1], self.other.server_address[1]
        for server in (self.http, self.other):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        for sock in (self.tcp, self.tcp6):
            threading.Thread(target=self._greet, args=(sock,), daemon=True).start()
        threading.Thread(target=self._udp, daemon=True).start()

    def _greet(self, sock):
        while True:
            try:
                c, _ = sock.accept()
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
        for s in (self.tcp, self.tcp6, self.udp):
            s.close()
        self.http.shutdown()
        self.other.shutdown()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def admin(settings):
    """The admin API, served for real on the host's loopback."""
    from werkzeug.serving import make_server

    from app import create_app

    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()


def env_for(redis_server, world, users="off", **extra):
    return {"PATH": os.environ["PATH"], "HOME": str(world), "REDIS_URL": redis_server.url,
            "ROUTINELY_DATA_DIR": str(world / "data"), "ROUTINELY_AGENT": f"{SYSTEM_PYTHON} {world / 'agents' / 'probe.py'}",
            "ROUTINELY_SANDBOX_PATHS": str(world / "agents"), "ROUTINELY_SESSION_USERS": users,
            "WORKER_SENTINEL": SENTINEL, "GITHUB_WEBHOOK_SECRET": "whsec-must-not-leak", **extra}


def apply(conn, network="full", allow=None, env=None, name="probe"):
    environment = {"network": network, "env": env or {}}
    if allow:
        environment["allow_hosts"] = allow
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        {"name": name, "account": "a", "prompt": "probe", "triggers": [{"api": {}}], "environment": environment}]}, time.time())


def worker(env):
    return subprocess.Popen(worker_command(burst=False), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run(conn, settings, env, workers=1):
    made = fire_one(settings, conn, "probe", Firing(kind="manual"))
    if workers == 1:
        run_sessions(env)
    else:
        procs = [subprocess.Popen(worker_command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(workers)]
        for p in procs:
            p.wait(120)
    return made["id"]


def log_of(conn, sid):
    return session_log.read(conn, sid)[0]


def probe_of(conn, sid):
    lines = log_of(conn, sid)
    found = [l for l in lines if l.startswith("PROBE ")]
    assert found, "\n".join(lines)
    return json.loads(found[0][6:])


def loopback_targets(port: int) -> list[str]:
    """Every spelling of "this host's loopback, port N" a session might try."""
    return [f"127.0.0.1:{port}", f"localhost:{port}", f"[::ffff:127.0.0.1]:{port}", f"2130706433:{port}",
            f"0x7f.1:{port}", f"[::1]:{port}", f"0.0.0.0:{port}"]


@pytest.mark.parametrize("network", ["none", "allowlist", "full"])
def test_nothing_of_the_host_is_reachable_under_any_policy(network, conn, settings, redis_server, world, listener,
                                                            admin, tmp_path):
    redis_port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    left = Path(tempfile.mkdtemp(prefix="rly-host-tmp-")) / "left-by-the-test"
    left.write_text("host tmp")
    left.parent.chmod(0o755)
    left.chmod(0o644)
    direct = [f"127.0.0.1:{p}" for p in (admin, listener.tcp_port, redis_port)] + [f"[::1]:{listener.tcp6_port}"]
    via_proxy = [t for p in (admin, listener.tcp_port, redis_port) for t in loopback_targets(p)]
    via_proxy.append(f"[::1]:{listener.tcp6_port}")
    probes = {"PROBE_TCP": " ".join(direct), "PROBE_UDP": f"127.0.0.1:{listener.udp_port}", "PROBE_NAME": "localhost",
              "PROBE_WALLS": "1", "PROBE_PATHS": " ".join([str(world / "data"), str(left), "/root", "/home", "/var", "/run/user",
                                                             str(Path(redis_server.dir))])}
    if network != "none":
        probes.update({"PROBE_CONNECT": " ".join(via_proxy), "PROBE_SOCKS": " ".join(via_proxy),
                       "PROBE_URLS": " ".join(f"http://{t}/api/routines" for t in via_proxy[:4])})
    apply(conn, network, allow=["example.com"] if network == "allowlist" else None, env=probes)
    sid = run(conn, settings, env_for(redis_server, world))
    got = probe_of(conn, sid)
    assert sessions.get(conn, settings, sid)["status"] == "succeeded"
    reached = {k: v for k, v in got.items() if k.split(" ")[0] in ("tcp", "connect", "socks", "url", "udp") and v["ok"]}
    assert reached == {}, reached
    assert got["resolve"]["ok"] is False or got["resolve"]["value"] in ("127.0.0.1", "::1")  # its own loopback, empty
    # its own processes only: bwrap's init, the launcher, the probe (and what it ran)
    cmdlines = got["processes"]["value"]
    assert len(cmdlines) <= 4 and all("cli" not in c and "redis-server" not in c for c in cmdlines.values()), cmdlines
    assert got["fds"]["value"] == [0, 1, 2, 3]  # 3 is the listing's own handle on /proc/self/fd
    assert got["status"]["value"]["CapEff"] == "0000000000000000" and got["status"]["value"]["CapBnd"] == "0000000000000000"
    for variable in ("REDIS_URL", "GITHUB_WEBHOOK_SECRET", "WORKER_SENTINEL", "ROUTINELY_DATA_DIR"):
        assert variable not in got["env"]
    assert SENTINEL not in json.dumps(got) and "whsec-must-not-leak" not in json.dumps(got)
    for path in (str(left), "/root", "/home", "/var", "/run/user", str(Path(redis_server.dir))):
        assert got[f"path {path}"]["error"] == "FileNotFoundError", (path, got[f"path {path}"])
    data = got[f"path {world / 'data'}"]
    assert data["ok"] is True and set(data["value"]) <= {"workspaces"}  # only the way to its own workspace (relays are the worker's)
    assert got["write_usr"]["ok"] is False and got["write_etc"]["ok"] is False and got["write_tmp"]["ok"] is True
    assert got["unshare"]["value"] != 0 and got["mount"]["value"] != 0
    assert not (left.parent / "routinely-probe").exists() and not Path("/tmp/routinely-probe").exists()
    if network != "none":
        no_proxy = got["env"].get("NO_PROXY", "")
        assert "localhost" not in no_proxy and "127.0.0.1," not in no_proxy + ","
        assert got["env"]["ALL_PROXY"].startswith("socks5h://127.0.0.1:")
        log = "\n".join(log_of(conn, sid))
        if network == "full":
            assert f"routinely: egress refused: 2130706433:{redis_port}: 127.0.0.1 is loopback" in log
            assert f"routinely: egress refused: ::ffff:127.0.0.1:{redis_port}: ::ffff:127.0.0.1 is loopback" in log
            assert f"routinely: egress refused: localhost:{redis_port}: 127.0.0.1 is loopback" in log
        else:
            assert f"routinely: egress refused: 2130706433:{redis_port} is not in this routine's allow_hosts" in log
        refusals = [line for line in log.splitlines() if line.startswith("routinely: egress refused:")]
        assert len(refusals) == 2 * len(via_proxy) + 4  # one line each: CONNECT, SOCKS and the URLs
    else:
        assert "HTTPS_PROXY" not in got["env"]  # no proxy at all: nothing leaves
    shutil.rmtree(left.parent)


def test_the_controls_reach_what_the_sandbox_refuses(conn, settings, redis_server, world, listener, client):
    """Without the sandbox the same probe reaches the listeners: the refusals above are the sandbox's."""
    apply(conn, "full", env={"PROBE_TCP": f"127.0.0.1:{listener.tcp_port} [::1]:{listener.tcp6_port}",
                             "PROBE_UDP": f"127.0.0.1:{listener.udp_port}"})
    sid = run(conn, settings, env_for(redis_server, world, ROUTINELY_SANDBOX="off"))
    got = probe_of(conn, sid)
    assert got[f"tcp 127.0.0.1:{listener.tcp_port}"] == {"ok": True, "value": "hello"}
    assert got[f"tcp [::1]:{listener.tcp6_port}"] == {"ok": True, "value": "hello"}
    assert got["udp"] == {"ok": True, "value": "pong"}
    log = "\n".join(log_of(conn, sid))
    assert "routinely: sandbox off (ROUTINELY_SANDBOX=off): this session runs unsandboxed" in log
    assert sessions.get(conn, settings, sid)["sandbox"] == "off"
    page = client.get(f"/sessions/{sid}").data.decode()
    assert "this session ran unsandboxed (ROUTINELY_SANDBOX=off)" in page


@pytest.mark.parametrize("network", ["allowlist", "full"])
def test_loopback_is_never_opened_and_a_private_address_only_by_an_ip_entry(network, conn, settings, redis_server, world,
                                                                            listener):
    """Loopback is never opened, not even by an entry naming it; a private address opens to an
    entry that is its IP literal (a host on a network namespace the test made)."""
    p, q = listener.http_port, listener.other_port
    private = PrivateHost(b"hello through the proxy")
    try:
        apply(conn, network, allow=[f"127.0.0.2:{p}", private.address], env={
            "PROBE_URLS": f"http://127.0.0.2:{p}/ http://127.0.0.3:{q}/ http://{private.address}/",
            "PROBE_CONNECT": f"127.0.0.2:{p} 127.0.0.3:{q} {private.address}", "PROBE_SOCKS": f"127.0.0.2:{p} {private.address}",
            "PROBE_TCP": f"127.0.0.2:{p} {private.address}",
        })
        sid = run(conn, settings, env_for(redis_server, world))
    finally:
        private.close()
    got = probe_of(conn, sid)
    for attempt in (f"url http://127.0.0.2:{p}/", f"connect 127.0.0.2:{p}", f"socks 127.0.0.2:{p}", f"tcp 127.0.0.2:{p}",
                    f"url http://127.0.0.3:{q}/", f"connect 127.0.0.3:{q}", f"tcp {private.address}"):
        assert got[attempt]["ok"] is False, (attempt, got[attempt])  # a direct socket has no route out at all
    for attempt in (f"url http://{private.address}/", f"connect {private.address}", f"socks {private.address}"):
        assert got[attempt] == {"ok": True, "value": "hello through the proxy"}, (attempt, got[attempt])
    log = "\n".join(log_of(conn, sid))
    assert f"routinely: egress refused: 127.0.0.2:{p}: 127.0.0.2 is loopback (no allow_hosts entry opens it)" in log
    if network == "allowlist":
        assert f"routinely: egress refused: 127.0.0.3:{q} is not in this routine's allow_hosts" in log


@needs_root
def test_two_concurrent_sessions_cannot_see_each_other_or_the_worker(conn, settings, redis_server, world):
    peers = world / "peers"
    apply(conn, "none", env={"PEERS_FILE": str(peers)})
    first = fire_one(settings, conn, "probe", Firing(kind="manual"))["id"]
    second = fire_one(settings, conn, "probe", Firing(kind="manual"))["id"]
    peers.write_text(f"{first} {second}")
    peers.chmod(0o644)
    env = env_for(redis_server, world, users="on", ROUTINELY_KEEP_WORKSPACES="1",
                  ROUTINELY_SANDBOX_PATHS=f"{world / 'agents'}:{peers}")
    procs = [subprocess.Popen(worker_command(), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    for p in procs:
        p.wait(120)
    a, b = probe_of(conn, first), probe_of(conn, second)
    assert a["uid"] != b["uid"] and a["uid"] >= 200_000 and b["uid"] >= 200_000
    for me, got in ((first, a), (second, b)):
        assert got["list_workspaces"]["value"] == [me]  # the other workspace is not even there
        for attempt in ("read_other", "write_other", "other_relays"):
            assert got[attempt]["ok"] is False and got[attempt]["error"] == "FileNotFoundError", (attempt, got[attempt])
        assert got["list_data"]["value"] == ["workspaces"]  # relays are the worker's: pushes go through the door
        assert SENTINEL not in json.dumps(got)
        assert got["env"]["HOME"].endswith("/.home")
    ws = world / "data" / "workspaces"
    for sid, got in ((first, a), (second, b)):
        secret = ws / sid / "secret.txt"
        assert secret.read_text() == f"secret of {sid}"  # the control: the files were there to find
        assert secret.stat().st_uid == got["uid"]
        assert not (ws / sid / "planted.txt").exists()
        assert stat.S_IMODE((ws / sid).stat().st_mode) == 0o700


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
    log = "\n".join(log_of(conn, sid))
    assert "refs/heads/claude/x" in remotes.refs("octo/api"), log
    assert "push to refs/heads/main refused" in log
    assert "routinely: forwarded refs/heads/claude/x to octo/api" in log
    assert sessions.get(conn, settings, sid)["status"] == "succeeded"


def test_a_daemon_does_not_outlive_the_agent(conn, settings, redis_server, world):
    marker = f"4321.{uuid.uuid4().int % 10**6}"
    apply(conn, "full", env={"PROBE_DAEMON": marker})
    sid = run(conn, settings, env_for(redis_server, world))
    assert "PROBE-DAEMON started" in log_of(conn, sid)
    assert sessions.get(conn, settings, sid)["status"] == "succeeded"
    assert host_processes_with(marker) == []


def test_a_daemon_does_not_outlive_a_timeout(conn, settings, redis_server, world):
    marker = f"4324.{uuid.uuid4().int % 10**6}"
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        {"name": "probe", "account": "a", "prompt": "probe", "triggers": [{"api": {}}], "timeout_minutes": 0.05,
         "environment": {"network": "none", "env": {"PROBE_DAEMON": marker, "PROBE_SLEEP": "120"}}}]}, time.time())
    sid = run(conn, settings, env_for(redis_server, world))
    assert "PROBE-DAEMON started" in log_of(conn, sid)
    assert sessions.get(conn, settings, sid)["status"] == "timed_out"
    assert host_processes_with(marker) == []


def test_a_daemon_does_not_outlive_a_cancel(conn, settings, redis_server, world):
    marker = f"4322.{uuid.uuid4().int % 10**6}"
    apply(conn, "allowlist", allow=["example.com"], env={"PROBE_DAEMON": marker, "PROBE_SLEEP": "120"})
    made = fire_one(settings, conn, "probe", Firing(kind="manual"))
    proc = worker(env_for(redis_server, world))
    try:
        assert wait_for(lambda: "PROBE-DAEMON started" in log_of(conn, made["id"]))
        assert host_processes_with(marker)  # the control: it was running
        sessions.cancel(conn, made["id"], "2026-01-01T00:00:00Z")
        assert wait_for(lambda: sessions.get(conn, settings, made["id"])["status"] == "canceled")
        assert wait_for(lambda: host_processes_with(marker) == [], 10)
    finally:
        proc.kill()
        proc.wait()


def test_a_daemon_does_not_outlive_a_worker_stopped_with_sigterm(conn, settings, redis_server, world):
    marker = f"4325.{uuid.uuid4().int % 10**6}"
    apply(conn, "full", env={"PROBE_DAEMON": marker, "PROBE_SLEEP": "120"})
    made = fire_one(settings, conn, "probe", Firing(kind="manual"))
    proc = worker(env_for(redis_server, world))
    try:
        assert wait_for(lambda: "PROBE-DAEMON started" in log_of(conn, made["id"]))
        assert host_processes_with(marker)
        for _ in range(5):  # however the worker winds down (a warm stop, then a cold one), it ends
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(2)
                break
            except subprocess.TimeoutExpired:
                continue
        assert proc.poll() is not None
        assert wait_for(lambda: host_processes_with(marker) == [], 10), host_processes_with(marker)
        # whatever cgroup the stopped worker left, the next worker's start-up removes once the session has ended
        from workers.reaper import reap

        reap(conn, time.time(), timeout=0)
        raw = sessions.get_raw(conn, made["id"])
        assert raw[b"status"] == b"queued"  # it did nothing outside: queued again for the next worker
        sessions.cancel(conn, made["id"], "2026-01-01T00:00:00Z")  # so the next worker only cleans up
        name = raw.get(b"sandbox_cgroup", b"").decode()
        subprocess.run(worker_command(), env=env_for(redis_server, world),
                       capture_output=True, timeout=60)
        assert not name or not [p for p in Path("/sys/fs/cgroup").glob(f"**/routinely/{name}") if p.is_dir()]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("users", ["off", pytest.param("on", marks=needs_root)])
def test_a_daemon_does_not_outlive_a_killed_worker(users, conn, settings, redis_server, world):
    marker = f"4323.{uuid.uuid4().int % 10**6}"
    apply(conn, "none", env={"PROBE_DAEMON": marker, "PROBE_SLEEP": "120"})
    made = fire_one(settings, conn, "probe", Firing(kind="manual"))
    proc = worker(env_for(redis_server, world, users=users))
    try:
        assert wait_for(lambda: "PROBE-DAEMON started" in log_of(conn, made["id"]))
        assert host_processes_with(marker)
        raw = sessions.get_raw(conn, made["id"])
        assert int(raw[b"sandbox_pid"]) > 0  # recorded for the reaper
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: host_processes_with(marker) == [], 10), host_processes_with(marker)
        # the reaper finishes what the dead worker left: its session cgroup goes too
        from workers.reaper import reap

        assert reap(conn, time.time(), timeout=0) == [made["id"]]
        name = raw.get(b"sandbox_cgroup", b"").decode()
        assert not name or not [p for p in Path("/sys/fs/cgroup").glob(f"**/routinely/{name}") if p.is_dir()]
    finally:
        proc.kill()


def test_a_worker_on_a_host_without_bwrap_stops_at_start_up(redis_server, world, tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with everything a worker needs but bwrap
    bin_dir.mkdir()
    for tool in ("git", "bash", "sh", "env", "true", "redis-server"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done = subprocess.run(worker_command(), capture_output=True, text=True,
                          env=env_for(redis_server, world, PATH=str(bin_dir)), timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "routinely: the session sandbox needs bubblewrap (`bwrap`): apt-get install bubblewrap, or set ROUTINELY_SANDBOX=off to run sessions unsandboxed"]


def test_a_worker_where_user_namespaces_are_refused_stops_at_start_up(redis_server, world, tmp_path):
    bin_dir = tmp_path / "bin"  # a bwrap that fails the way it does under Docker's default seccomp profile
    bin_dir.mkdir()
    (bin_dir / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace, likely because the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n")
    (bin_dir / "bwrap").chmod(0o755)
    env = env_for(redis_server, world, PATH=f"{bin_dir}:{os.environ['PATH']}")
    done = subprocess.run(worker_command(), capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 1
    line, = done.stderr.strip().splitlines()
    assert line.startswith("routinely: bwrap cannot build the session sandbox on this host (bwrap: No permissions")
    assert "seccomp=unconfined" in line and "ROUTINELY_SANDBOX=off" in line


@needs_root
def test_a_data_dir_session_users_cannot_enter_fails_with_what_to_set(conn, settings, redis_server, world, tmp_path):
    apply(conn, "full")
    env = env_for(redis_server, world, users="on", ROUTINELY_DATA_DIR=str(tmp_path / "data"))  # under a 0700 folder
    sid = run(conn, settings, env)
    assert sessions.get(conn, settings, sid)["status"] == "failed"
    assert "which session users cannot enter: set ROUTINELY_DATA_DIR" in "\n".join(log_of(conn, sid))


def test_sandbox_settings_are_checked():
    from routinely.config import ConfigError

    base = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    assert Settings.from_env(base).sandbox is True
    assert Settings.from_env({**base, "ROUTINELY_SANDBOX": "off"}).sandbox is False
    with pytest.raises(ConfigError, match="ROUTINELY_SANDBOX takes on or off"):
        Settings.from_env({**base, "ROUTINELY_SANDBOX": "maybe"})
    with pytest.raises(ConfigError, match="absolute host paths"):
        Settings.from_env({**base, "ROUTINELY_SANDBOX_PATHS": "opt/tool"})
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.from_env({**base, "ROUTINELY_SANDBOX_PATHS": "/usr:/no/such/tool"})
    assert Settings.from_env({**base, "ROUTINELY_SANDBOX_PATHS": "/usr/bin/:/tmp"}).sandbox_paths == ("/usr/bin", "/tmp")


@needs_root
def test_a_cached_setup_and_the_shared_mirror_work_inside_the_sandbox(conn, settings, redis_server, world):
    """Warm start under the sandbox: the checkout borrows the mirror's objects (mounted read-only)
    and a second session starts from the first one's setup, as its own user."""
    from tests.support import Remotes

    (world / "github").mkdir()
    remotes = Remotes(world / "github")
    remotes.create("octo/api", files={"requirements.txt": "lib==1\n"})
    script = world / "agents" / "warm.sh"
    script.write_text('cd "${ROUTINELY_REPOS%% *}" && echo "SAW $(cat built.txt) $(git log --oneline | wc -l) $(id -u)" && git status --porcelain\n')
    script.chmod(0o644)
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        {"name": "probe", "account": "a", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}],
         "environment": {"setup": "echo built-by-$ROUTINELY_SESSION_ID > api/built.txt", "network": "none"}}]}, time.time())
    env = env_for(redis_server, world, users="on", GITHUB_GIT_URL=remotes.url, ROUTINELY_AGENT=f"sh {script}")
    first, second = run(conn, settings, env), run(conn, settings, env)
    logs = {sid: "\n".join(log_of(conn, sid)) for sid in (first, second)}
    for sid in (first, second):
        assert sessions.get(conn, settings, sid)["status"] == "succeeded", logs[sid]
    saw = {sid: next(l for l in log_of(conn, sid) if l.startswith("SAW ")).split() for sid in (first, second)}
    assert saw[first][1] == saw[second][1] == f"built-by-{first}"  # the second reused the first's setup
    assert saw[first][2] == "1" and saw[first][3] != saw[second][3]  # history readable; two session users
    assert "setup result cached" in logs[first] and "running setup" not in logs[second], logs[second]
