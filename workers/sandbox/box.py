"""The Sandbox: what one session may reach, and the one command line that enforces it.

The runner opens a Sandbox, shares the session's folders, adds its doors (unix sockets
served by the worker), asks for the Command that runs setup or the agent, and closes it
when the session ends. With the sandbox on, that command is bubblewrap started as the
session's uid (privileges dropped first); with ROUTINELY_SANDBOX=off it is the bare command.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shlex
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from routinely.routine_file import Environment, Network
from workers.sandbox import bwrap, host
from workers.sandbox.bounds import Bounds, Volume, enforcer
from workers.sandbox.cgroup import Limits
from workers.sandbox.egress import EgressProxy
from workers.sandbox.launch import TcpBridge

if TYPE_CHECKING:
    from routinely.records.sessions import Session

UID_BASE, UID_SPAN = 200_000, 100_000
UID_DIR = Path("/run/routinely/uids")  # host-wide: every worker process of this host reserves its uids here
LAUNCHER = Path(__file__).with_name("launch.py")


class SandboxError(Exception):
    """The host cannot enforce the routine's policy; str() is the one line for the log."""


def session_uid(session_id: str) -> int:
    """The first uid a session tries (reserve_uid probes onward from it)."""
    digest = hashlib.sha256(session_id.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:4], "big") % UID_SPAN


@dataclass
class UidLease:
    """A session uid this host's other sessions cannot get while it is held: the flock on
    UID_DIR/<uid> (the file names the session), taken by the worker and let go when it exits."""

    uid: int
    session_id: str
    fd: int
    path: Path

    def release(self) -> None:
        """Give the uid back — only once none of its processes is left (else it stays taken)."""
        if self.fd < 0:
            return
        if _none_left(self.uid):
            try:
                os.unlink(self.path)  # while locked: the next taker makes a new file
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = -1


def _lock(path: Path) -> int | None:
    """An fd holding the flock on the file now at `path` (made if missing); None while another holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # released and removed while we waited: lock the file there now


def _holder(fd: int) -> str:
    return os.pread(fd, 256, 0).decode(errors="replace")


def reserve_uid(session_id: str) -> UidLease:
    """A uid no other session of this host holds and no process runs as, from session_uid()
    onward. Raises SandboxError when every uid of the range is taken.

    A uid whose holder's worker died is free once none of its processes is left: the reaper
    then finds it named for another session and leaves its processes alone (see finish)."""
    UID_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    first = session_uid(session_id) - UID_BASE
    for step in range(UID_SPAN):
        uid = UID_BASE + (first + step) % UID_SPAN
        path = UID_DIR / str(uid)
        fd = _lock(path)
        if fd is None:
            continue
        if any(_owned_by(uid)):  # not ours to hand out (a dead worker's session, or not a session at all)
            if _holder(fd) == "":
                os.unlink(path)
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, session_id.encode(), 0)
        return UidLease(uid, session_id, fd, path)
    raise SandboxError(f"routinely: all {UID_SPAN} session uids of this host are in use; wait for sessions to end "
                       "or run fewer workers here")


def _finish_uid(uid: int, session_id: str) -> bool:
    """For the reaper: end the processes of `uid` and give it back, if it is still `session_id`'s
    (a live session holds it, or another took it once it was empty: theirs then). True when
    none of the session's processes is left under it."""
    path = UID_DIR / str(uid)
    try:
        UID_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = _lock(path)
    except OSError:  # not root: its processes are all it can try to end
        kill_user(uid)
        return _none_left(uid)
    if fd is None:
        return True
    if _holder(fd) not in ("", session_id):
        os.close(fd)
        return True
    kill_user(uid)
    UidLease(uid, session_id, fd, path).release()
    return _none_left(uid, 0)


def _leased_to(session_id: str) -> list[int]:
    """The uids whose lease file names `session_id` (a session whose worker died before it recorded its uid)."""
    found = []
    for entry in UID_DIR.glob("*") if UID_DIR.is_dir() else ():
        try:
            if entry.name.isdigit() and entry.read_text(errors="replace") == session_id:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class Door:
    name: str
    socket_path: str
    port: int
    bridge: TcpBridge | None = None  # worker-side, when the session has no namespace of its own


@dataclass
class Command:
    """What process.run starts: argv as `user`, with `pass_fds` handed over (then closed)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    user: int | None = None
    pass_fds: tuple[int, ...] = ()
    join: tuple[str, ...] = ()  # the session's cgroup (its procs files)
    rlimits: tuple[tuple[int, int], ...] = ()  # the fallback where no cgroup can be used


@dataclass
class Sandbox:
    network: str
    enabled: bool = True
    uid: int | None = None
    allow_hosts: list[str] = field(default_factory=list)
    proxy: EgressProxy | None = None
    doors: dict[str, Door] = field(default_factory=dict)
    readable: list[Path] = field(default_factory=list)
    writable: list[Path] = field(default_factory=list)
    bounds: Bounds | None = None
    _door_dir: Path | None = None
    _uid_lease: UidLease | None = None

    @classmethod
    def open(cls, environment: Environment | dict, session_id: str, session_users: bool, log: Callable[[str], None],
             enabled: bool = True, paths: tuple[str, ...] = (), limits: Limits = Limits(),
             cgroups: str = "auto") -> "Sandbox":
        """Raises SandboxError when the sandbox cannot be built here (fail closed).

        `environment` is the routine's (a mapping in the file's shape is validated into one);
        `enabled` is ROUTINELY_SANDBOX; `paths` is ROUTINELY_SANDBOX_PATHS; `limits` bound the
        whole session (setup and agent share them), enforced as `cgroups` (ROUTINELY_CGROUPS) says."""
        environment = Environment.model_validate(environment)
        if session_users and os.geteuid() != 0:
            raise SandboxError("routinely: session users need the worker to run as root; set ROUTINELY_SESSION_USERS=off to run sessions as the worker's user")
        lease = reserve_uid(session_id) if session_users else None
        box = cls(network=environment.network, enabled=enabled, uid=lease.uid if lease else None,
                  allow_hosts=list(environment.allow_hosts), _uid_lease=lease)
        try:
            box.bounds = Bounds.open(f"session-{session_id}", limits, enforcer(cgroups))
        except OSError as exc:
            box.close()
            raise SandboxError(f"routinely: cannot make the session's cgroup: {exc}") from None
        if box.uid is not None:
            box.bounds.stop_hook = lambda: kill_user(box.uid)  # where no cgroup can end the session
        if box.bounds.enforcer.notice:
            log(box.bounds.enforcer.notice)
        if not enabled:
            log(f"routinely: sandbox off (ROUTINELY_SANDBOX=off): this session runs unsandboxed, "
                f"network: {box.network} is not enforced")
            return box
        problem = host.problem(os.geteuid() == 0 and session_users, os.environ.get("PATH"))
        if problem:
            box.close()
            raise SandboxError(problem)
        box.readable += [Path(p) for p in paths]
        if box.network != Network.NONE:
            sock = str(box.door_dir / "egress.sock")
            box.proxy = EgressProxy(box.network, box.allow_hosts, log, sock, box._door_ports)
            box.add_door("egress", sock)
        return box

    # -- what the session is given
    @property
    def ids(self) -> tuple[int, int] | None:
        return (self.uid, self.uid) if self.uid is not None else None

    @property
    def door_dir(self) -> Path:
        """A folder of this session's alone (0700: the worker and the session's uid) where door
        servers create their sockets; removed by close()."""
        if self._door_dir is None:
            # short: unix socket paths are limited to 107 bytes
            self._door_dir = Path(tempfile.mkdtemp(prefix="rly-doors-"))
            if self.uid is not None:
                os.chown(self._door_dir, self.uid, self.uid)
            self.readable.append(self._door_dir)
        return self._door_dir

    def add_door(self, name: str, socket_path: str) -> int:
        """Give the session `socket_path`; returns the port it reaches it on at 127.0.0.1.

        Call before command(). The socket is handed to the session's uid alone."""
        if name in self.doors:
            raise ValueError(f"door {name!r} was added twice")
        if self.uid is not None:
            os.chown(socket_path, self.uid, self.uid)
        os.chmod(socket_path, 0o600)
        if self.enabled:  # inside the session's own network namespace: nothing else listens there
            used = {d.port for d in self.doors.values()}
            door = Door(name, socket_path, random.choice([p for p in range(20_000, 60_000, 7) if p not in used]))
        else:
            bridge = TcpBridge(socket_path)
            door = Door(name, socket_path, bridge.port, bridge)
        self.doors[name] = door
        return door.port

    def share(self, path: Path, writable: bool = False) -> None:
        """Mount a host folder or file into the sandbox at the same path (call before command())."""
        (self.writable if writable else self.readable).append(Path(path))

    # -- the session's bounds
    def watch(self, *paths: "Path | Volume") -> None:
        """Count `paths` against disk_mb and disk_inodes from now until close(): every folder the
        session writes where its bytes land (the workspace; a cached setup's upper layer, not the
        merged view over it), or the session's Volume (exact, and capped by the kernel).
        Calling it again adds folders; a folder given twice counts once."""
        if self.bounds is not None:
            self.bounds.watch(*paths)

    def over(self) -> bool:
        """True when a limit says the running command must stop now (disk; the disk watch has
        already stopped the session's processes)."""
        return self.bounds is not None and self.bounds.over() is not None

    def ended(self) -> str | None:
        """After a command: the reason when a limit stopped it (`out of memory (limit N MB)`,
        `disk limit exceeded`), else None."""
        return self.bounds.ended() if self.bounds is not None else None

    def notes(self) -> list[str]:
        """Log lines about limits the session ran into without being stopped (pids)."""
        if self.bounds is None or self.bounds.cgroup is None or self.bounds.usage().pids_refused == 0:
            return []
        return [f"routinely: the session reached its pids limit ({self.bounds.limits.pids}): "
                f"{self.bounds.usage().pids_refused} forks were refused"]

    def resources(self) -> dict | None:
        return self.bounds.resources() if self.bounds is not None else None

    def _door_ports(self) -> dict[int, str]:
        return {d.port: d.socket_path for d in self.doors.values() if d.name != "egress"}

    @property
    def extra_env(self) -> dict[str, str]:
        """The variables that point the session's programs at the egress proxy. Loopback is
        not exempted: the proxy itself takes requests for the session's other doors."""
        egress = self.doors.get("egress")
        if egress is None:
            return {"TMPDIR": "/tmp"} if self.enabled else {}
        url = f"http://127.0.0.1:{egress.port}"
        socks = f"socks5h://127.0.0.1:{egress.port}"
        direct = ",".join(f"127.0.0.1:{port}" for port in self._door_ports())
        env = {"HTTPS_PROXY": url, "HTTP_PROXY": url, "https_proxy": url, "http_proxy": url,
               "ALL_PROXY": socks, "all_proxy": socks, "NO_PROXY": direct, "no_proxy": direct, "TMPDIR": "/tmp"}
        return {k: v for k, v in env.items() if v}

    # -- the command
    def command(self, argv: list[str], env: dict[str, str], cwd: Path, home: Path) -> Command:
        """argv as it runs under this sandbox: bwrap as the session's uid, or bare when off."""
        bounds = {"join": self.bounds.join, "rlimits": self.bounds.rlimits} if self.bounds else {}
        if not self.enabled:
            return Command(argv, env, cwd, self.uid, **bounds)
        readable = [*self.readable, *agent_paths(argv, env.get("PATH", ""))]
        walls = bwrap.Walls(uid=self.uid if self.uid is not None else os.geteuid(), home=home, cwd=cwd,
                            writable=_unique(self.writable), readable=_unique(p for p in readable if p.exists()),
                            tmp_bytes=self._tmp_mb() * 1024 * 1024)
        launcher_args = []
        for door in self.doors.values():
            launcher_args += ["--door", door.socket_path, str(door.port)]
        full, fds = bwrap.command(walls, env, LAUNCHER.read_bytes(), host.bwrap() or "bwrap", host.python(), launcher_args, argv)
        return Command(full, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd, self.uid, tuple(fds), **bounds)

    def _tmp_mb(self) -> int:
        """The private /tmp's size: a tmpfs, so memory (charged to the session's cgroup), and a
        folder the session writes, so no larger than its disk either — the kernel refuses past it."""
        if self.bounds is None:
            return 1024
        return max(1, int(min(self.bounds.limits.memory_mb, self.bounds.limits.disk_mb)))

    def close(self) -> None:
        for door in self.doors.values():
            if door.bridge is not None:
                door.bridge.close()
        if self.proxy is not None:
            self.proxy.close()
        if self.bounds is not None:
            self.bounds.close()  # every process of the session, then its cgroup
        if self.uid is not None:
            kill_user(self.uid)
        if self._uid_lease is not None:
            self._uid_lease.release()  # after its last process: never while one runs
        if self._door_dir is not None:
            shutil.rmtree(self._door_dir, ignore_errors=True)


def _unique(paths) -> list[Path]:
    return list(dict.fromkeys(Path(p) for p in paths))


def agent_paths(argv: list[str], path_env: str) -> list[Path]:
    """The host paths an agent command needs beyond /usr: its program as found on PATH
    (a symlink there is bound to its target) and as resolved, with the installation it sits
    in (`<prefix>/bin/<name>`, or a virtualenv: the prefix)."""
    words = argv
    if len(argv) >= 3 and Path(argv[0]).name in ("bash", "sh") and argv[1] == "-c":
        try:
            words = shlex.split(argv[2])
        except ValueError:
            words = argv[2].split()
    if not words:
        return []
    where = shutil.which(words[0], path=path_env) if "/" not in words[0] else words[0]
    if not where or not os.path.exists(where):
        return []
    found = [Path(os.path.abspath(where)), Path(os.path.realpath(where))]
    out = []
    for program in dict.fromkeys(found):
        if program.parts[:2] == ("/", "usr"):
            continue
        prefix = program.parent.parent
        is_install = program.parent.name == "bin" and len(prefix.parts) >= 3 and prefix.name != ".local"
        if is_install and (program == found[1] or (prefix / "pyvenv.cfg").exists()):
            out.append(prefix)
        else:
            out.append(program)
    return out


def git_alternates(repo: Path) -> list[Path]:
    """Object stores a checkout borrows from (a shared mirror): the sandbox must see them."""
    listed = repo / ".git" / "objects" / "info" / "alternates"
    try:
        lines = listed.read_text().split()
    except OSError:
        return []
    base = repo / ".git" / "objects"
    return [Path(os.path.normpath(base / line)) for line in lines if line]


def kill_user(uid: int) -> int:
    """SIGKILL every process of a session's uid (daemons that left the process group)."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def finish(session: Session) -> bool:
    """For the reaper, on the session's own host: end whatever is left of a session whose
    worker died (its cgroup, its uid's processes), remove its cgroup and give its uid back.
    True when nothing is left (or the session ran on another host, which finishes its own)."""
    import socket

    from workers.sandbox.bounds import finish as finish_cgroup

    if session.host != socket.gethostname():
        return True
    done = finish_cgroup(session.sandbox_cgroup)
    session_id = session.id
    uids = set(_leased_to(session_id)) if session_id else set()
    recorded = session.sandbox_uid
    if recorded is not None and UID_BASE <= recorded < UID_BASE + UID_SPAN:
        uids.add(recorded)
    for uid in sorted(uids):
        done = _finish_uid(uid, session_id) and done
    return done


def _none_left(uid: int, wait: float = 2.0) -> bool:
    """True once no process runs as `uid` (killed ones linger a moment until they are reaped)."""
    end = time.monotonic() + wait
    while any(_owned_by(uid)):
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)
    return True


def _owned_by(uid: int):
    """The live processes of `uid` (not zombies: they hold nothing and wait for their parent)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid and \
                    (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                yield int(entry.name)
        except (OSError, IndexError):
            continue


def sweep(conn, mode: str = "auto") -> list[str]:
    """At worker start-up: remove the cgroups of this host's sessions that have ended (their
    worker died and the reaper ran elsewhere). Returns the session ids swept."""
    from routinely.records import sessions
    from workers.sandbox.bounds import finish as finish_cgroup, leftovers

    swept = []
    for name in leftovers(mode):
        sid = name.removeprefix("session-")
        session = sessions.load(conn, sid)
        # only sessions this store knows have ended: another service on this host owns the rest
        if session is not None and session.status not in ("queued", "running"):
            finish_cgroup(name, mode)
            swept.append(sid)
    return swept
