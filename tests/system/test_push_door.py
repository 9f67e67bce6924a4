"""The push door under attack: a session pushes over git's protocol to a relay the worker owns,
and nothing it sends or writes runs with the worker's rights or reaches a remote it may not.

Real bwrap sandboxes with session users, a real RQ worker, real git remotes (local bare
repositories), a probe agent; the verdicts are read on the host: files, remotes, the mirror,
a loopback listener, the worker's threads.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from routinely.routines import catalog
from routinely.records import session_log, sessions
from routinely.firing.start import Firing, fire_one
from tests.support import git, one_commit_remote, needs_root_sandbox, proc_status, reachable_folder, Remotes, SYSTEM_PYTHON, run_sessions
from workers import pushguard
from workers.pushguard import MAX_CONNECTIONS, PushGuard
from workers.sandbox.launch import TcpBridge


class Listener:
    """A TCP listener on the host's loopback that counts who connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def refs_of(path: Path) -> dict[str, str]:
    out = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=path)
    return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines())}


@needs_root_sandbox
@pytest.mark.parametrize("network", ["none", "full"])
def test_the_relay_attacks_reach_nothing_on_the_host(conn, settings, redis_server, tmp_path, network):
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3 for the probe agent")
    marker_dir = tmp_path / "root-only"  # pytest's tmp: the worker (root) can write here, no session can
    marker_dir.mkdir()
    marker = marker_dir / "pwned"
    listener = Listener()
    with reachable_folder("rly-push-", agents=("relay_attacker.py",)) as world:
        (world / "github").mkdir()
        remotes = Remotes(world / "github")
        remotes.create("octo/api")
        remotes.create("octo/other")
        before = {name: remotes.refs(name) for name in ("octo/api", "octo/other")}
        catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [{
            "name": "probe", "account": "a", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}],
            "environment": {"network": network, "env": {"MARKER": str(marker), "LISTENER": f"git://127.0.0.1:{listener.port}",
                                                        "DATA_DIR_GUESS": str(world / "data")}}}]}, time.time())
        env = {"PATH": os.environ["PATH"], "HOME": str(world), "REDIS_URL": redis_server.url,
               "ROUTINELY_DATA_DIR": str(world / "data"), "GITHUB_GIT_URL": remotes.url,
               "ROUTINELY_AGENT": f"{SYSTEM_PYTHON} {world / 'agents' / 'relay_attacker.py'}",
               "ROUTINELY_SANDBOX_PATHS": str(world / "agents"), "ROUTINELY_SESSION_USERS": "on"}
        sid = fire_one(settings, conn, "probe", Firing(kind="manual"))["id"]
        done = run_sessions(env)
        lines = session_log.read(conn, sid)[0]
        log = "\n".join(lines)
        seen = json.loads(next((line for line in lines if line.startswith("RELAY ")), "RELAY {}")[6:])
        assert seen, log + done.stderr[-2000:]
        after = {name: remotes.refs(name) for name in ("octo/api", "octo/other")}
        mirror = refs_of(world / "data" / "mirrors" / "octo__api.git") if (world / "data" / "mirrors" / "octo__api.git").exists() \
            else refs_of(next((world / "data" / "mirrors").rglob("*.git")))
    listener.close()
    # a command run by git: nothing the session wrote ran as the worker
    assert not marker.exists(), log
    assert seen["origin"].startswith("git://127.0.0.1:"), seen["origin"]
    assert not seen["list_relays"]["ok"] and not any(v["ok"] for k, v in seen.items() if k.startswith("write "))
    # a rewrite to a loopback listener: nothing connected
    assert listener.accepted == 0
    # another repository of the installation: untouched
    assert after["octo/other"] == before["octo/other"]
    # only the allowed branch arrived: no tag, no note, no replace ref, main as it was
    assert set(after["octo/api"]) == set(before["octo/api"]) | {"refs/heads/claude/ok"}, after
    assert after["octo/api"]["refs/heads/main"] == before["octo/api"]["refs/heads/main"]
    assert "push to refs/tags/v9 refused: this routine may not push tags" in log
    assert "push to refs/notes/commits refused" in log
    assert "push to refs/heads/main refused" in log
    assert "routinely: forwarded refs/heads/claude/ok to octo/api" in log
    assert "claude/dotgit" not in after["octo/api"]  # fsck refused the .git tree entry
    for name in ("raw archive", "raw dotdot", "raw option", "raw long"):
        assert "ERR routinely:" in seen[name].get("value", ""), (name, seen[name])
    # the mirror every later session clones from holds only what the remote had
    assert mirror == {ref: sha for ref, sha in before["octo/api"].items()}
    assert sessions.get(conn, settings, sid)["status"] == "succeeded"


@pytest.fixture
def guard(tmp_path):
    remote, work = one_commit_remote(tmp_path)
    lines: list[str] = []
    sock = tempfile_sock(tmp_path)
    g = PushGuard(tmp_path / "relays", "claude/", False, lines.append, sock=sock, max_input_bytes=256 * 1024)
    g.add("octo/api", f"file://{remote}", lambda: None)
    g.lines, g.remote, g.work = lines, remote, work  # type: ignore[attr-defined]
    yield g
    g.close()


def tempfile_sock(tmp_path: Path) -> str:
    import tempfile
    folder = tempfile.mkdtemp(prefix="rly-t-")
    return os.path.join(folder, "push.sock")


def test_idle_connections_to_the_push_door_cost_the_worker_a_bounded_few_threads(guard):
    threads, rss = proc_status("Threads"), proc_status("VmRSS")
    clients = []
    try:
        for _ in range(2000):
            c = socket.socket(socket.AF_UNIX)
            c.connect(guard.sock)
            clients.append(c)
        # every connection past the cap is answered and closed at once
        refused = clients[-1].recv(200)
        assert refused.startswith(b"00") and b"ERR routinely: more than" in refused
        grown = proc_status("Threads") - threads
        assert grown <= MAX_CONNECTIONS, grown
        assert proc_status("VmRSS") - rss < 32 * 1024
        assert sum("more than" in line for line in guard.lines) == 1  # one line for the burst
    finally:
        for c in clients:
            c.close()


def test_a_request_line_without_end_is_cut_at_the_cap(guard):
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(guard.sock)
        try:
            c.sendall(b"ffff" + b"a" * (1 << 20))
        except OSError:
            pass  # the door may close before all of it is sent: that is the point
        assert b"request line too long" in c.recv(200)


def test_a_push_larger_than_the_session_may_write_is_refused(guard, tmp_path):
    bridge = TcpBridge(guard.sock)
    try:
        (guard.work / "big").write_bytes(os.urandom(1024 * 1024))  # random: does not compress below the cap
        git("add", "big", cwd=guard.work)
        git("commit", "-qm", "big", cwd=guard.work)
        done = subprocess.run(["git", "push", guard.url("octo/api", bridge.port), "HEAD:refs/heads/claude/big"],
                              cwd=guard.work, capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})
        assert done.returncode != 0
        assert "claude/big" not in refs_of(guard.relays["octo__api"].path)
        # and a small one still goes through, to the remote
        git("checkout", "-q", "-b", "small", "HEAD~1", cwd=guard.work)
        (guard.work / "small").write_text("small\n")
        git("add", "small", cwd=guard.work)
        git("commit", "-qm", "small", cwd=guard.work)
        done = subprocess.run(["git", "push", guard.url("octo/api", bridge.port), "HEAD:refs/heads/claude/small"],
                              cwd=guard.work, capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})
        assert done.returncode == 0, done.stderr
        assert "forwarded refs/heads/claude/small to octo/api" in done.stderr
        assert "refs/heads/claude/small" in refs_of(guard.remote)
    finally:
        bridge.close()


def test_the_door_speaks_only_git_services_on_known_repositories():
    with pytest.raises(ValueError):
        _request(b"git-upload-archive /octo/api.git\0host=x\0")
    assert pushguard.read_request(_conn(b"git-receive-pack /octo/api.git\0host=x\0"))[:2] == ("git-receive-pack", "/octo/api.git")
    assert pushguard.read_request(_conn(b"git-upload-pack /o/r.git\0host=x\0\0version=2\0"))[2] == "version=2"
    assert pushguard.read_request(_conn(b"git-upload-pack /o/r.git\0host=x\0\0version=9\0"))[2] == ""


def _conn(body: bytes) -> socket.socket:
    a, b = socket.socketpair()
    a.sendall(b"%04x" % (len(body) + 4) + body)
    a.close()
    return b


def _request(body: bytes):
    return pushguard.read_request(_conn(body))


def test_the_worker_writes_session_files_as_data_never_through_a_planted_link(tmp_path):
    from workers.workspace import Workspace

    ws = Workspace.create(tmp_path / "data", "s1")
    outside = tmp_path / "outside.txt"
    os.symlink(outside, ws.root / ".routinely" / "prompt.md")
    os.link(ws.write(".routinely/original", "x"), ws.root / ".routinely" / "hard")
    ws.write(".routinely/prompt.md", "the prompt")  # the link's name is replaced, its target never written
    ws.write(".routinely/hard", "y")
    assert not outside.exists() and (ws.root / ".routinely" / "original").read_text() == "x"
    assert (ws.root / ".routinely" / "prompt.md").read_text() == "the prompt"
    assert ws.write(".routinely/event.json", "{}").read_text() == "{}"
