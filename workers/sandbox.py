"""Session isolation, enforced by the platform: the network policy and the session's own user.

`network: none` and `allowlist` run setup and agent in a new network namespace (only a
loopback of their own); `allowlist` adds the egress proxy, reachable as HTTPS_PROXY. With
session users (the default when the worker runs as root), setup and agent run as a uid of
their own, so one session cannot read another's workspace or the worker's data. Where the
host cannot enforce what the routine asks, the session fails closed.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from workers.egress import EgressProxy

UID_BASE, UID_SPAN = 200_000, 100_000


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
class Sandbox:
    network: str
    uid: int | None = None
    proxy: EgressProxy | None = None
    port: int | None = None
    prefix: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, environment: dict, session_id: str, session_users: bool, log: Callable[[str], None]) -> "Sandbox":
        """Raises SandboxError when the policy cannot be enforced here (fail closed)."""
        network = environment["network"]
        uid = session_uid(session_id) if session_users else None
        if uid is not None and os.geteuid() != 0:
            raise SandboxError("routinely: session users need the worker to run as root; set ROUTINELY_SESSION_USERS=off to run sessions as the worker's user")
        box = cls(network=network, uid=uid)
        if network == "full":
            return box
        prefix = netns_prefix()
        if prefix is None:
            raise SandboxError(f"routinely: environment.network: {network} needs network namespaces (unshare --net), "
                               "which this host does not allow; the session did not run")
        box.prefix = prefix
        if network == "allowlist":
            box.proxy = EgressProxy(environment["allow_hosts"], log)
            box.port = random.randint(20_000, 60_000)  # inside the session's own namespace: nothing else listens
            url = f"http://127.0.0.1:{box.port}"
            box.extra_env = {"HTTPS_PROXY": url, "HTTP_PROXY": url, "https_proxy": url, "http_proxy": url,
                             "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
        return box

    @property
    def ids(self) -> tuple[int, int] | None:
        return (self.uid, self.uid) if self.uid is not None else None

    def command(self, argv: list[str]) -> list[str]:
        """argv wrapped so that it runs under this sandbox's policy."""
        if self.network == "full" and self.uid is None:
            return argv
        launcher = [sys.executable, "-m", "workers.launch"]
        if self.proxy is not None:
            launcher += ["--bridge", self.proxy.sock, str(self.port)]
        if self.uid is not None:
            launcher += ["--uid", str(self.uid), "--gid", str(self.uid)]
        return [*self.prefix, *launcher, "--", *argv]

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.uid is not None:
            kill_user(self.uid)


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
