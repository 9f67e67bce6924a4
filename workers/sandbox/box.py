"""The Sandbox: what one session may reach, and the one command line that enforces it.

The runner opens a Sandbox, shares the session's folders, adds its doors (unix sockets
served by the worker), asks for the Command that runs setup or the agent, and closes it
when the session ends. With the sandbox on, that command is bubblewrap started as the
session's uid (privileges dropped first); with ROUTINELY_SANDBOX=off it is the bare command.
"""
from __future__ import annotations

import hashlib
import os
import random
import shlex
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workers.sandbox import bwrap, host
from workers.sandbox.bounds import Bounds, enforcer
from workers.sandbox.cgroup import Limits
from workers.sandbox.egress import EgressProxy
from workers.sandbox.launch import TcpBridge

UID_BASE, UID_SPAN = 200_000, 100_000
LAUNCHER = Path(__file__).with_name("launch.py")


class SandboxError(Exception):
    """The host cannot enforce the routine's policy; str() is the one line for the log."""


def session_uid(session_id: str) -> int:
    digest = hashlib.sha256(session_id.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:4], "big") % UID_SPAN


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

    @classmethod
    def open(cls, environment: dict, session_id: str, session_users: bool, log: Callable[[str], None],
             enabled: bool = True, paths: tuple[str, ...] = (), limits: Limits = Limits(),
             cgroups: str = "auto") -> "Sandbox":
        """Raises SandboxError when the sandbox cannot be built here (fail closed).

        `enabled` is ROUTINELY_SANDBOX; `paths` is ROUTINELY_SANDBOX_PATHS; `limits` bound the
        whole session (setup and agent share them), enforced as `cgroups` (ROUTINELY_CGROUPS) says."""
        uid = session_uid(session_id) if session_users else None
        if uid is not None and os.geteuid() != 0:
            raise SandboxError("routinely: session users need the worker to run as root; set ROUTINELY_SESSION_USERS=off to run sessions as the worker's user")
        box = cls(network=environment["network"], enabled=enabled, uid=uid,
                  allow_hosts=list(environment.get("allow_hosts") or []))
        try:
            box.bounds = Bounds.open(f"session-{session_id}", limits, enforcer(cgroups))
        except OSError as exc:
            raise SandboxError(f"routinely: cannot make the session's cgroup: {exc}") from None
        if box.bounds.enforcer.notice:
            log(box.bounds.enforcer.notice)
        if not enabled:
            log(f"routinely: sandbox off (ROUTINELY_SANDBOX=off): this session runs unsandboxed, "
                f"network: {box.network} is not enforced")
            return box
        problem = host.problem(os.geteuid() == 0 and session_users, os.environ.get("PATH"))
        if problem:
            raise SandboxError(problem)
        box.readable += [Path(p) for p in paths]
        if box.network != "none":
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
    def watch(self, workspace: Path) -> None:
        """Count `workspace` against disk_mb (checked every few seconds while commands run)."""
        if self.bounds is not None:
            self.bounds.workspace = workspace

    def over(self) -> bool:
        """True when a limit says the running command must stop now (disk)."""
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
                            tmp_bytes=(self.bounds.limits.memory_mb if self.bounds else 1024) * 1024 * 1024)
        launcher_args = []
        for door in self.doors.values():
            launcher_args += ["--door", door.socket_path, str(door.port)]
        full, fds = bwrap.command(walls, env, LAUNCHER.read_bytes(), host.bwrap() or "bwrap", host.python(), launcher_args, argv)
        return Command(full, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd, self.uid, tuple(fds), **bounds)

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


def finish(raw: dict[bytes, bytes]) -> bool:
    """For the reaper, on the session's own host: end whatever is left of a session whose
    worker died (its cgroup, its uid's processes) and remove its cgroup. True when nothing is
    left (or the session ran on another host, which finishes its own)."""
    import socket

    from workers.sandbox.bounds import finish as finish_cgroup

    if raw.get(b"host", b"").decode() != socket.gethostname():
        return True
    done = finish_cgroup(raw.get(b"sandbox_cgroup", b"").decode() or None)
    uid = raw.get(b"sandbox_uid", b"").decode()
    if uid.isdigit() and int(uid) >= UID_BASE:
        kill_user(int(uid))
        done = done and not any(_owned_by(int(uid)))
    return done


def _owned_by(uid: int):
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                yield int(entry.name)
        except OSError:
            continue


def sweep(conn, mode: str = "auto") -> list[str]:
    """At worker start-up: remove the cgroups of this host's sessions that have ended (their
    worker died and the reaper ran elsewhere). Returns the session ids swept."""
    from routinely import sessions
    from workers.sandbox.bounds import finish as finish_cgroup, leftovers

    swept = []
    for name in leftovers(mode):
        sid = name.removeprefix("session-")
        raw = sessions.get_raw(conn, sid)
        # only sessions this store knows have ended: another service on this host owns the rest
        if raw is not None and raw.get(b"status", b"").decode() not in ("queued", "running"):
            finish_cgroup(name, mode)
            swept.append(sid)
    return swept
