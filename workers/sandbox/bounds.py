"""One session's bounds: its limits, the cgroup (or rlimits) that enforce them, the disk
watch over its workspace, and what it used — read by the runner for outcomes and `resources`."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from workers.sandbox.cgroup import Cgroup, Enforcer, Limits, Usage, rlimits

DISK_CHECK_SECONDS = 3.0


@lru_cache(maxsize=4)
def enforcer(mode: str = "auto") -> Enforcer:
    """Detected once per worker process (ROUTINELY_CGROUPS)."""
    return Enforcer.detect(mode)


def limits_for(environment: Mapping[str, Any], defaults: Mapping[str, Any]) -> Limits:
    """The routine's environment.limits over the service's (ROUTINELY_SESSION_LIMITS) over the built-in defaults."""
    return Limits(**{**defaults, **(environment.get("limits") or {})})


def disk_mb(root: Path) -> float:
    """Space the files under `root` take (blocks, not apparent sizes; hard links once)."""
    total, seen = 0, set()
    stack = [str(root)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total / (1024 * 1024)


@dataclass
class Bounds:
    limits: Limits
    enforcer: Enforcer
    name: str
    cgroup: Cgroup | None = None
    workspace: Path | None = None
    disk_peak_mb: float = 0.0
    reason: str | None = None  # why the session was stopped (a limit), once it was
    _last_disk_check: float = 0.0
    _final: Usage | None = field(default=None, repr=False)

    @classmethod
    def open(cls, name: str, limits: Limits, enforcer: Enforcer) -> "Bounds":
        bounds = cls(limits=limits, enforcer=enforcer, name=name)
        bounds.cgroup = enforcer.cgroup(name, limits)
        return bounds

    # -- what a new process of the session does before it drops privileges
    @property
    def join(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.cgroup.procs) if self.cgroup else ()

    @property
    def rlimits(self) -> tuple[tuple[int, int], ...]:
        return () if self.cgroup else tuple(rlimits(self.limits))

    # -- while it runs
    def over(self) -> str | None:
        """The reason to stop the session now (past disk_mb), checked every few seconds."""
        now = time.monotonic()
        if self.reason is None and self.workspace is not None and now - self._last_disk_check >= DISK_CHECK_SECONDS:
            self._last_disk_check = now
            used = disk_mb(self.workspace)
            self.disk_peak_mb = max(self.disk_peak_mb, used)
            if used > self.limits.disk_mb:
                self.reason = "disk limit exceeded"
        return self.reason

    def usage(self) -> Usage:
        if self._final is not None:
            return self._final
        return self.cgroup.usage() if self.cgroup else Usage()

    def ended(self) -> str | None:
        """After a command: the reason when a limit stopped it (memory, disk), else None."""
        if self.reason:
            return self.reason
        if self.usage().oom_kills > 0:
            self.reason = f"out of memory (limit {self.limits.memory_mb} MB)"
        return self.reason

    def resources(self) -> dict[str, float | int | None]:
        """`resources` of the session: what users size their limits by."""
        if self.workspace is not None:
            try:
                self.disk_peak_mb = max(self.disk_peak_mb, disk_mb(self.workspace))
            except OSError:
                pass
        measured = self.cgroup is not None
        use = self.usage()
        return {"memory_peak_mb": round(use.memory_peak_mb, 1) if measured else None,
                "cpu_seconds": round(use.cpu_seconds, 2) if measured else None,
                "pids_peak": use.pids_peak if measured else None,
                "disk_mb": round(self.disk_peak_mb, 1)}

    def close(self) -> bool:
        """Kill whatever is left in the session's cgroup and remove it; False if it stayed."""
        if self.cgroup is None:
            return True
        self._final = self.cgroup.usage()
        return self.cgroup.remove()


def describe(limits: Limits) -> str:
    return ", ".join(f"{k} {v}" for k, v in asdict(limits).items())


def finish(cgroup_name: str | None, mode: str = "auto") -> bool:
    """For the reaper: end every process left in a dead worker's session cgroup and remove it.
    True when nothing of it is left."""
    if not cgroup_name:
        return True
    group = enforcer(mode).cgroup(cgroup_name, Limits(), create=False)
    return group is None or group.remove()


def leftovers(mode: str = "auto") -> list[str]:
    """Names of the session cgroups this host still has (for the worker's start-up sweep)."""
    found = enforcer(mode)
    parent = found.v2_parent or (found.v1_parents or {}).get("freezer")
    if parent is None:
        return []
    return sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith("session-"))
