"""A session's resource limits, enforced by the kernel: one cgroup per session (v2, or the v1
hierarchies where that is what the host has), or rlimits where neither can be used.

Every process of the session (its whole sandbox, setup and agent) joins the session's cgroup
before it drops privileges, so nothing it forks is outside it. The cgroup is also how the
session is ended (cgroup.kill, or freeze-and-kill on v1), how its use is measured, and it is
removed when the session ends.
"""
from __future__ import annotations

import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from routinely.routines.limits import Limits

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
MB = 1024 * 1024


@dataclass
class Usage:
    memory_peak_mb: float = 0.0
    cpu_seconds: float = 0.0
    pids_peak: int = 0
    oom_kills: int = 0
    pids_refused: int = 0  # forks refused at the pids limit


def _own(controller: str | None) -> str:
    """This process's cgroup path in one v1 hierarchy (or in v2 when controller is None)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if (controller is None and names == "") or (controller is not None and controller in names.split(",")):
            return path
    raise FileNotFoundError(controller or "cgroup2")


def _read(path: Path, default: str = "0") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _keyed(path: Path) -> dict[str, int]:
    out = {}
    for line in _read(path, "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


class Cgroup:
    """One session's cgroup. `procs` are the files a new process writes its pid to."""

    version = ""

    def __init__(self, name: str, limits: Limits) -> None:
        self.name, self.limits = name, limits
        self.procs: list[Path] = []

    def usage(self) -> Usage: ...
    def pids(self) -> set[int]: ...
    def kill(self) -> None: ...
    def _dirs(self) -> list[Path]: ...
    def _set_frozen(self, frozen: bool) -> None: ...
    def _is_frozen(self) -> bool: ...

    def freeze(self, frozen: bool = True, wait: float = 1.0) -> bool:
        """Stop (or resume) every process of the session at once, as the disk watch does while it
        measures; True once the kernel says they all stopped (or on resume)."""
        try:
            self._set_frozen(frozen)
        except OSError:
            return False
        end = time.monotonic() + wait
        while frozen and not self._is_frozen():
            if time.monotonic() >= end:  # one in uninterruptible sleep: go on without it
                return False
            time.sleep(0.001)
        return True

    def remove(self) -> bool:
        """Kill what is left and remove the cgroup; False if it could not be removed."""
        for _ in range(50):
            self.kill()
            try:
                for folder in self._dirs():
                    if folder.exists():
                        folder.rmdir()
                return True
            except OSError:
                time.sleep(0.1)
        return False


class CgroupV2(Cgroup):
    version = "v2"

    def __init__(self, name: str, limits: Limits, parent: Path, create: bool = True) -> None:
        super().__init__(name, limits)
        self.dir = parent / name
        self.procs = [self.dir / "cgroup.procs"]
        if not create:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "memory.max").write_text(str(limits.memory_mb * MB))
        if (self.dir / "memory.swap.max").exists():
            (self.dir / "memory.swap.max").write_text("0")
        (self.dir / "cpu.max").write_text(f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        (self.dir / "pids.max").write_text(str(limits.pids))

    def _dirs(self) -> list[Path]:
        return [self.dir]

    def usage(self) -> Usage:
        events = _keyed(self.dir / "memory.events")
        return Usage(memory_peak_mb=int(_read(self.dir / "memory.peak")) / MB,
                     cpu_seconds=_keyed(self.dir / "cpu.stat").get("usage_usec", 0) / 1e6,
                     pids_peak=int(_read(self.dir / "pids.peak")), oom_kills=events.get("oom_kill", 0),
                     pids_refused=_keyed(self.dir / "pids.events").get("max", 0))

    def pids(self) -> set[int]:
        return {int(p) for p in _read(self.dir / "cgroup.procs", "").split()}

    def _set_frozen(self, frozen: bool) -> None:
        (self.dir / "cgroup.freeze").write_text("1" if frozen else "0")

    def _is_frozen(self) -> bool:
        return _keyed(self.dir / "cgroup.events").get("frozen") == 1

    def kill(self) -> None:
        if (self.dir / "cgroup.kill").exists():
            try:
                (self.dir / "cgroup.kill").write_text("1")
                return
            except OSError:
                pass
        _kill_all(self.pids)


class CgroupV1(Cgroup):
    version = "v1"

    def __init__(self, name: str, limits: Limits, parents: dict[str, Path], create: bool = True) -> None:
        super().__init__(name, limits)
        self.dirs = {c: parents[c] / name for c in V1_CONTROLLERS}
        self.procs = [folder / "cgroup.procs" for folder in self.dirs.values()]
        if not create:
            return
        for folder in self.dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        memory = self.dirs["memory"]
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory_mb * MB))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
            (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb * MB))
        (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * CPU_PERIOD_US)))
        (self.dirs["pids"] / "pids.max").write_text(str(limits.pids))

    def _dirs(self) -> list[Path]:
        return list(self.dirs.values())

    def usage(self) -> Usage:
        memory, pids = self.dirs["memory"], self.dirs["pids"]
        return Usage(memory_peak_mb=int(_read(memory / "memory.max_usage_in_bytes")) / MB,
                     cpu_seconds=int(_read(self.dirs["cpuacct"] / "cpuacct.usage")) / 1e9,
                     pids_peak=int(_read(pids / "pids.peak")),
                     oom_kills=_keyed(memory / "memory.oom_control").get("oom_kill", 0),
                     pids_refused=_keyed(pids / "pids.events").get("max", 0))

    def pids(self) -> set[int]:
        return {int(p) for p in _read(self.dirs["freezer"] / "cgroup.procs", "").split()}

    def _set_frozen(self, frozen: bool) -> None:
        (self.dirs["freezer"] / "freezer.state").write_text("FROZEN" if frozen else "THAWED")

    def _is_frozen(self) -> bool:
        return _read(self.dirs["freezer"] / "freezer.state", "") == "FROZEN"

    def kill(self) -> None:
        """Freeze (no fork can race the kill), SIGKILL everything, thaw so the kills land."""
        state = self.dirs["freezer"] / "freezer.state"
        try:
            state.write_text("FROZEN")
        except OSError:
            pass
        _kill_all(self.pids)
        try:
            state.write_text("THAWED")
        except OSError:
            pass


def _kill_all(pids: Callable[[], set[int]]) -> None:
    for _ in range(20):
        found = pids()
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


# -- which mechanism this host offers

def _v2_parent() -> Path | None:
    """A v2 cgroup we may create session cgroups in, with memory, cpu and pids enabled for them.

    The worker's own cgroup must be able to enable them for its children (the root, or a
    delegated cgroup the worker's process manager left empty of other processes)."""
    for mount in (ROOT, ROOT / "unified"):
        if not (mount / "cgroup.controllers").exists():
            continue
        try:
            own = mount / _own(None).lstrip("/")
            if not set(V2_CONTROLLERS) <= set(_read(own / "cgroup.controllers", "").split()):
                continue
            if not set(V2_CONTROLLERS) <= set(_read(own / "cgroup.subtree_control", "").split()):
                (own / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in V2_CONTROLLERS))
            parent = own / "routinely"
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in V2_CONTROLLERS))
            return parent
        except (OSError, FileNotFoundError):
            continue
    return None


def _v1_parents() -> dict[str, Path] | None:
    parents = {}
    for controller in V1_CONTROLLERS:
        mount = ROOT / controller
        if not (mount / "cgroup.procs").exists():
            return None
        try:
            parent = mount / _own(controller).lstrip("/") / "routinely"
            parent.mkdir(exist_ok=True)
            if not os.access(parent, os.W_OK):
                return None
        except (OSError, FileNotFoundError):
            return None
        parents[controller] = parent
    return parents


@dataclass
class Enforcer:
    """How this worker bounds its sessions: `kind` is v2, v1 or rlimit."""

    kind: str
    v2_parent: Path | None = None
    v1_parents: dict[str, Path] | None = None

    @classmethod
    def detect(cls, mode: str = "auto") -> "Enforcer":
        """`mode` is ROUTINELY_CGROUPS: auto (v2, else v1, else rlimits), v2, v1 or off (rlimits)."""
        if mode in ("auto", "v2"):
            parent = _v2_parent()
            if parent is not None:
                return cls("v2", v2_parent=parent)
        if mode in ("auto", "v1"):
            parents = _v1_parents()
            if parents is not None:
                return cls("v1", v1_parents=parents)
        return cls("rlimit")

    @property
    def notice(self) -> str | None:
        """The one line for the worker's start-up and each session's log when limits are partial."""
        if self.kind != "rlimit":
            return None
        return ("routinely: session limits fall back to rlimits (no writable cgroup v2 or v1 here): memory is "
                "bounded per process (RLIMIT_AS), processes per session user (RLIMIT_NPROC; not for root), "
                "CPU is not bounded; delegate a cgroup to the worker to enforce them all")

    def cgroup(self, name: str, limits: Limits, create: bool = True) -> Cgroup | None:
        """A new session cgroup, or (create=False) the existing one of that name."""
        if self.kind == "v2":
            return CgroupV2(name, limits, self.v2_parent, create)
        if self.kind == "v1":
            return CgroupV1(name, limits, self.v1_parents, create)
        return None


def rlimits(limits: Limits) -> list[tuple[int, int]]:
    """The fallback: (resource, value) pairs a session's first process sets before exec."""
    return [(resource.RLIMIT_AS, limits.memory_mb * MB), (resource.RLIMIT_NPROC, limits.pids)]
