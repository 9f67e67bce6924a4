"""Disk limits (disk_mb, disk_inodes) and session uids, against hostile sessions in real sandboxes.

Each writer is bounded by itself (200,000 empty files, 2 GB) far past the small limits set
here, so a limit that does not hold fails the test instead of filling the host. The figures
asserted are the host's: files and blocks found on disk after the session was stopped."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from routinely.routines import catalog, limits
from routinely.records import session_log, sessions
from routinely.config import ConfigError, Settings
from routinely.routine_file import ApplyError
from routinely.firing.start import Firing, fire_one
from tests.support import proc_status, reachable_folder, wait_for
from tests.support import SYSTEM_PYTHON, needs_root, needs_sandbox, run_sessions
from workers import process
from workers.sandbox import Sandbox, SandboxError, box as box_module
from workers.sandbox.bounds import Volume, disk_use, enforcer, limits_for, overshoot_inodes, overshoot_mb, volume_problem
from workers.sandbox.cgroup import Limits
from workers.workspace import Workspace
from tests.support import ROOT_DIR

pytestmark = needs_sandbox
needs_cgroups = pytest.mark.skipif(enforcer("auto").kind == "rlimit", reason="no writable cgroup (v2 or v1) on this host")
needs_volumes = pytest.mark.skipif(os.geteuid() != 0 or volume_problem(Path("/tmp")) is not None,
                                   reason="no loop-mounted volumes on this host")

EMPTY_FILES = "import os\nfor i in range(200_000):\n    os.close(os.open(f'e{i}', os.O_CREAT | os.O_WRONLY))\nprint('made all', flush=True)\n"
FAST_FILES = "b = bytes(8 << 20)\nfor i in range(250):\n    open(f'f{i}', 'wb').write(b)\nprint('wrote all', flush=True)\n"  # 2 GB


@pytest.fixture
def base():
    with reachable_folder("rly-disk-") as folder:
        yield folder


class Session:
    """One session as the runner makes it: its Sandbox (cgroup, uid), a workspace, commands."""

    def __init__(self, base: Path, limits: Limits, users: bool = True, sid: str | None = None) -> None:
        self.id = sid or f"disk-{uuid.uuid4().hex[:12]}"
        self.box = Sandbox.open({"network": "none"}, self.id, users, lambda line: None, limits=limits)
        self.ws = Workspace.create(base / "data", self.id, self.box.ids)
        self.box.share(self.ws.root, writable=True)

    def run(self, script: str, cwd: Path | None = None, wait: bool = True) -> tuple[process.Result, list[str]]:
        cmd = self.box.command([SYSTEM_PYTHON or "python3", "-c", script], {"PATH": "/usr/bin:/bin", "HOME": str(self.ws.home)},
                               cwd or self.ws.root, self.ws.home)
        out: list[str] = []
        result = process.run(cmd.argv, cmd.cwd, cmd.env, "", time.monotonic() + 120, out.extend, self.box.over,
                             user=cmd.user, pass_fds=cmd.pass_fds, join=cmd.join, rlimits=cmd.rlimits)
        return result, out

    def start(self, script: str) -> tuple[threading.Thread, list[str]]:
        """run() in a thread: the command runs on until it ends or the session is closed."""
        got: list[list[str]] = []
        thread = threading.Thread(target=lambda: got.append(self.run(script)[1]))
        thread.start()
        return thread, got

    def close(self) -> None:
        self.box.close()
        self.ws.remove()






# -- the field

def test_disk_inodes_is_checked_like_the_other_limits(conn):
    base_routine = {"name": "r", "account": "a", "prompt": "p", "triggers": [{"api": {}}]}
    for bad in (10, 2.5, "many"):
        with pytest.raises(ApplyError, match="disk_inodes must be a whole number of at least 100"):
            catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [
                {**base_routine, "environment": {"limits": {"disk_inodes": bad}}}]}, time.time())
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "ROUTINELY_SESSION_LIMITS": "disk_inodes=5000,pids=64"})
    assert settings.session_limits == {"disk_inodes": 5000, "pids": 64}
    assert limits_for({}, settings.session_limits).disk_inodes == 5000
    assert limits_for({"limits": {"disk_inodes": 300}}, settings.session_limits).disk_inodes == 300
    assert limits_for({}, {}).disk_inodes == 1_000_000 == Limits().disk_inodes
    with pytest.raises(ConfigError, match="disk_inodes must be"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "ROUTINELY_SESSION_LIMITS": "disk_inodes=0"})
    assert "disk_inodes" in limits.KEYS


# -- counted by the disk watch (no volume): the contract end to end, through a worker

@needs_cgroups
def test_many_empty_files_end_the_session_at_disk_inodes(conn, settings, redis_server, base):
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3 for the agent")
    (base / "agents").mkdir()
    (base / "agents" / "files.py").write_text(f"import os\nos.chdir(os.environ['HOME'])\n{EMPTY_FILES}")
    (base / "agents").chmod(0o755)
    cap = 3000
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        {"name": "files", "account": "a", "prompt": "p", "triggers": [{"api": {}}],
         # the counting watch stops a writer within a tick or so; at a tenth of a CPU even a busy
         # host's late tick (four test processes on two cores) is few files
         "environment": {"limits": {"disk_inodes": cap, "cpus": 0.1}}}]}, time.time())
    sid = fire_one(settings, conn, "files", Firing(kind="manual"))["id"]
    env = {"PATH": os.environ["PATH"], "HOME": str(base), "REDIS_URL": redis_server.url, "ROUTINELY_DATA_DIR": str(base / "data"),
           "ROUTINELY_AGENT": f"{SYSTEM_PYTHON} {base / 'agents' / 'files.py'}", "ROUTINELY_SANDBOX_PATHS": str(base / "agents"),
           "ROUTINELY_SESSION_USERS": "off", "ROUTINELY_KEEP_WORKSPACES": "1"}
    run_sessions(env)
    got = sessions.get(conn, settings, sid)
    log = "\n".join(session_log.read(conn, sid)[0])
    assert got["status"] == "failed" and got["reason"] == "disk limit exceeded", log
    assert "made all" not in log
    made = len(list((base / "data" / "workspaces" / sid / ".home").iterdir()))  # on the host, after the stop
    print(f"disk_inodes {cap}: {made} files made before the stop")
    assert cap - 20 < made <= cap + overshoot_inodes(cap)


@needs_cgroups
def test_a_fast_writer_of_one_file_is_stopped_within_the_bound(base):
    s = Session(base, Limits(disk_mb=100), users=False)
    try:
        s.box.watch(s.ws.root)
        result, out = s.run("b = bytes(1 << 20)\nwith open('big', 'wb') as f:\n    for i in range(2000):\n        f.write(b)\n"
                            "print('wrote all', flush=True)\n")
        assert s.box.ended() == "disk limit exceeded", out
        on_disk = disk_use([s.ws.root]).mb
        print(f"disk_mb 100, one file at full speed: {on_disk:.1f} MB on disk at the stop")
        assert 100 < on_disk <= 100 + overshoot_mb(100)  # RLIMIT_FSIZE holds it there however fast it is written
        assert "wrote all" not in out
    finally:
        s.close()


@needs_cgroups
def test_every_watched_folder_counts_once(base):
    before = proc_status("Threads")
    s = Session(base, Limits(disk_mb=100), users=False)
    other = s.ws.root / ".home" / "upper"  # stands for a cached setup's upper layer
    other.mkdir()
    try:
        s.box.watch(s.ws.root)
        s.box.watch(other, other, s.ws.root)  # called again, and with a folder twice: counted once
        assert proc_status("Threads") == before + 1  # the disk watch: one thread per session
        result, out = s.run("b = bytes(1 << 20)\nfor i in range(60):\n    open(f'a{i}', 'wb').write(b)\nprint('first', flush=True)\n",
                            cwd=other)
        assert s.box.ended() is None, out  # 60 MB: under the limit, though the root holds the folder
        result, out = s.run("import os, time\nb = bytes(1 << 20)\nfor i in range(60):\n    open(f'b{i}', 'wb').write(b)\n"
                            "print('second', flush=True)\ntime.sleep(20)\n")
        assert s.box.ended() == "disk limit exceeded", out
        assert result.outcome != "exited" or result.exit_code != 0
    finally:
        s.close()
    assert wait_for(lambda: proc_status("Threads") == before, 10)


# -- on a volume of the session's own: the kernel holds the bound

@needs_volumes
@needs_cgroups
def test_a_fast_writer_on_its_volume_is_stopped_within_the_bound(base):
    s = Session(base, Limits(disk_mb=100, disk_inodes=2000))
    volume = Volume.create(base / "data" / "volumes" / f"{s.id}.img", s.ws.root / "volume", s.box.bounds.limits, s.box.ids)
    try:
        s.box.watch(s.ws.root, volume)
        result, out = s.run(FAST_FILES, cwd=volume.mountpoint)
        assert s.box.ended() == "disk limit exceeded", out
        on_disk = sum(f.stat().st_blocks * 512 for f in volume.mountpoint.glob("f*")) / (1 << 20)
        print(f"disk_mb 100, 8 MB files at full speed: {on_disk:.1f} MB on disk at the stop")
        assert 100 < on_disk <= 100 + overshoot_mb(100)
        assert "wrote all" not in out
    finally:
        s.close()
        volume.remove()
    assert not volume.image.exists() and not os.path.ismount(volume.mountpoint)


@needs_volumes
@needs_cgroups
def test_empty_files_on_its_volume_stop_at_disk_inodes(base):
    s = Session(base, Limits(disk_inodes=2000))
    volume = Volume.create(base / "data" / "volumes" / f"{s.id}.img", s.ws.root / "volume", s.box.bounds.limits, s.box.ids)
    try:
        s.box.watch(volume)
        result, out = s.run(EMPTY_FILES, cwd=volume.mountpoint)
        assert s.box.ended() == "disk limit exceeded", out
        made = sum(1 for name in os.listdir(volume.mountpoint) if name.startswith("e"))
        print(f"disk_inodes 2000 on a volume: {made} files made before the stop")
        assert 2000 - 20 < made <= 2000 + overshoot_inodes(2000)
    finally:
        s.close()
        volume.remove()


# -- session uids

@pytest.fixture
def two_uids(monkeypatch, tmp_path):
    """A range of two uids (no other session's), reserved in a folder of this test's own."""
    monkeypatch.setattr(box_module, "UID_BASE", 390_000)
    monkeypatch.setattr(box_module, "UID_SPAN", 2)
    monkeypatch.setattr(box_module, "UID_DIR", tmp_path / "uids")
    return tmp_path / "uids"


def colliding_ids() -> tuple[str, str]:
    first = "collide-0"
    for n in range(1, 1000):
        if box_module.session_uid(f"collide-{n}") == box_module.session_uid(first):
            return first, f"collide-{n}"
    raise AssertionError("no collision in 1000 ids")


@needs_root
def test_two_sessions_on_one_uid_never_share_it_and_close_gives_it_back(base, two_uids):
    a_id, b_id = colliding_ids()  # both start at the same uid
    a = Session(base, Limits(), sid=a_id)
    b = Session(base, Limits(), sid=b_id)
    try:
        assert {a.box.uid, b.box.uid} == {390_000, 390_001}
        with pytest.raises(SandboxError, match="all 2 session uids of this host are in use"):
            Sandbox.open({"network": "none"}, "third", True, lambda line: None)
        # what one session runs is not ended by the other's close (kill_user of its uid)
        running, _ = a.start("import os, time\nopen('started', 'w').write(str(os.getuid()))\ntime.sleep(60)\n")
        assert wait_for(lambda: (a.ws.root / "started").exists())
        assert (a.ws.root / "started").read_text() == str(a.box.uid)
        b.close()
        assert running.is_alive() and any(box_module._owned_by(a.box.uid))
        assert not (two_uids / str(b.box.uid)).exists()  # released after b's cleanup
        c = Session(base, Limits(), sid="after-b")
        assert c.box.uid == b.box.uid
        c.close()
    finally:
        a.close()
    running.join(10)
    assert not running.is_alive() and not any(box_module._owned_by(a.box.uid)) and list(two_uids.iterdir()) == []


@needs_root
def test_a_uid_is_held_across_worker_processes_until_the_reaper_finishes_its_session(base, two_uids):
    holder = (f"import sys, time\nsys.path.insert(0, {str(ROOT_DIR)!r})\nfrom pathlib import Path\n"
              "from workers.sandbox import box\nbox.UID_BASE, box.UID_SPAN, box.UID_DIR = 390_000, 2, Path(sys.argv[1])\n"
              "lease = box.reserve_uid('dead-session')\nprint(lease.uid, flush=True)\ntime.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "-c", holder, str(two_uids)], stdout=subprocess.PIPE, text=True)
    try:
        held = int(other.stdout.readline())
        a = Session(base, Limits(), sid="alive")
        assert a.box.uid == 390_001 - (held - 390_000)  # the other worker process holds its uid
        a.close()
        # the holder's worker dies; a process of its session runs on as its uid
        other.kill()
        other.wait()
        straggler = subprocess.Popen(["sleep", "60"], user=held, group=held, extra_groups=[])
        b = Session(base, Limits(), sid="new")
        c_error = None
        try:
            Sandbox.open({"network": "none"}, "third", True, lambda line: None)
        except SandboxError as exc:
            c_error = str(exc)
        assert b.box.uid != held and c_error  # never handed out while a process runs as it
        b.close()
        dead = sessions.Session(id="dead-session", host=os.uname().nodename)  # it died before recording its uid
        assert box_module.finish(dead)
        straggler.wait(10)
        assert list(two_uids.iterdir()) == []  # released
    finally:
        other.kill()
        other.wait()
        if "straggler" in locals():
            straggler.kill()
            straggler.wait()


def test_a_tree_deeper_than_a_path_can_name_is_counted_whole(tmp_path):
    """Paths past PATH_MAX (4096) hid files from a walk by names; the count walks by folder fds."""
    from workers.sandbox.bounds import disk_use

    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(80):  # 80 × 61 characters: a path of ~4,900 bytes
            os.mkdir("d" * 60, dir_fd=folder)
            inner = os.open("d" * 60, os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open("deep.bin", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=folder)
        os.write(fd, os.urandom(3 * 1024 * 1024))
        os.close(fd)
    finally:
        os.close(folder)
    use = disk_use([tmp_path])
    assert use.mb >= 3 and use.inodes >= 81 and not use.unreadable


def test_a_file_held_open_after_deleting_it_still_counts(tmp_path):
    from workers.sandbox.bounds import disk_use

    with open(tmp_path / "gone.bin", "wb") as held:
        held.write(os.urandom(4 * 1024 * 1024))
        held.flush()
        os.unlink(tmp_path / "gone.bin")
        assert disk_use([tmp_path]).mb < 1  # no name shows it
        assert disk_use([tmp_path], pids=[os.getpid()]).mb >= 4  # its holder does


def test_a_mirror_object_a_checkout_shares_costs_the_session_nothing(tmp_path):
    """Root's files with several links are the host mirror's objects, hard-linked into a
    checkout: they use no disk of the session's (a session cannot hard-link root's files)."""
    from workers.sandbox.bounds import disk_use

    mirror, checkout = tmp_path / "mirror", tmp_path / "checkout"
    mirror.mkdir()
    checkout.mkdir()
    (mirror / "pack").write_bytes(os.urandom(2 * 1024 * 1024))
    os.link(mirror / "pack", checkout / "pack")
    (checkout / "own.bin").write_bytes(os.urandom(1024 * 1024))
    use = disk_use([checkout])
    assert 1 <= use.mb < 1.5
