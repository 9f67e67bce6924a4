"""The Sandbox: what a session may reach, and the one command line that enforces it.

The runner opens a Sandbox, adds the session's doors (unix sockets served by the worker),
asks it for the command that runs setup or the agent, and closes it when the session ends.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from workers.sandbox.egress import EgressProxy
from workers.sandbox.launch import TcpBridge

UID_BASE, UID_SPAN = 200_000, 100_000
LAUNCHER = Path(__file__).with_name("launch.py")


class SandboxError(Exception):
    """The host cannot enforce the routine's policy; str() is the one line for the log."""


@lru_cache(maxsize=1)
def netns_prefix() -> tuple[str, ...] | None:
    """How this host makes a network namespace, or None when it cannot."""
    candidates = [("unshare", "--net")] if os.geteuid() == 0 else []
    candidates.append(("unshare", "--user", "--map-root-user", "--net"))
    for prefix in candidates:
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


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
class Sandbox:
    network: str
    uid: int | None = None
    prefix: tuple[str, ...] = ()
    proxy: EgressProxy | None = None
    doors: dict[str, Door] = field(default_factory=dict)
    _door_dir: Path | None = None

    @classmethod
    def open(cls, environment: dict, session_id: str, session_users: bool, log: Callable[[str], None]) -> "Sandbox":
        """Raises SandboxError when the policy cannot be enforced here (fail closed)."""
        network = environment["network"]
        uid = session_uid(session_id) if session_users else None
        if uid is not None and os.geteuid() != 0:
            raise SandboxError("routinely: session users need the worker to run as root; set ROUTINELY_SESSION_USERS=off to run sessions as the worker's user")
        box = cls(network=network, uid=uid)
        if network != "full":
            prefix = netns_prefix()
            if prefix is None:
                raise SandboxError(f"routinely: environment.network: {network} needs network namespaces (unshare --net), "
                                   "which this host does not allow; the session did not run")
            box.prefix = prefix
        if network == "allowlist":
            sock = str(box.door_dir / "egress.sock")
            box.proxy = EgressProxy(environment["allow_hosts"], log, sock)
            box.add_door("egress", sock)
        return box

    @property
    def ids(self) -> tuple[int, int] | None:
        return (self.uid, self.uid) if self.uid is not None else None

    @property
    def namespaced(self) -> bool:
        """The session has a network namespace of its own (doors are bridged inside it)."""
        return bool(self.prefix)

    @property
    def door_dir(self) -> Path:
        """A folder of this session's alone (0700: the worker and the session's uid) where door
        servers create their sockets; removed by close()."""
        if self._door_dir is None:
            # short: unix socket paths are limited to 107 bytes
            self._door_dir = Path(tempfile.mkdtemp(prefix="rly-doors-"))
            if self.uid is not None:
                os.chown(self._door_dir, self.uid, self.uid)
        return self._door_dir

    def add_door(self, name: str, socket_path: str) -> int:
        """Give the session `socket_path`; returns the port it reaches it on at 127.0.0.1.

        Call before command(). The socket is handed to the session's uid alone."""
        if name in self.doors:
            raise ValueError(f"door {name!r} was added twice")
        if self.uid is not None:
            os.chown(socket_path, self.uid, self.uid)
        os.chmod(socket_path, 0o600)
        if self.namespaced:
            used = {d.port for d in self.doors.values()}
            port = random.choice([p for p in range(20_000, 60_000, 7) if p not in used])  # nothing else listens there
            door = Door(name, socket_path, port)
        else:
            bridge = TcpBridge(socket_path)
            door = Door(name, socket_path, bridge.port, bridge)
        self.doors[name] = door
        return door.port

    @property
    def extra_env(self) -> dict[str, str]:
        """The variables that point the session's programs at its doors."""
        egress = self.doors.get("egress")
        if egress is None:
            return {}
        url = f"http://127.0.0.1:{egress.port}"
        return {"HTTPS_PROXY": url, "HTTP_PROXY": url, "https_proxy": url, "http_proxy": url,
                "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}

    def command(self, argv: list[str]) -> list[str]:
        """argv wrapped so that it runs under this sandbox's policy."""
        if not self.namespaced and self.uid is None:
            return argv
        launcher = [sys.executable, str(LAUNCHER)]
        for door in self.doors.values():
            if door.bridge is None:
                launcher += ["--door", door.socket_path, str(door.port)]
        if self.uid is not None:
            launcher += ["--uid", str(self.uid), "--gid", str(self.uid)]
        return [*self.prefix, *launcher, "--", *argv]

    def close(self) -> None:
        for door in self.doors.values():
            if door.bridge is not None:
                door.bridge.close()
        if self.proxy is not None:
            self.proxy.close()
        if self.uid is not None:
            kill_user(self.uid)
        if self._door_dir is not None:
            shutil.rmtree(self._door_dir, ignore_errors=True)


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
