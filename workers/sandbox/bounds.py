"""One session's bounds: its limits, the cgroup (or rlimits) that enforce them, the disk
watch over the folders it writes, and what it used — read by the runner for outcomes and `resources`."""
from __future__ import annotations

import os
import resource
import stat
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from routinely import disk
from routinely.routine_file import Environment
from workers.sandbox.cgroup import Cgroup, Enforcer, Limits, Usage, rlimits

MB = 1024 * 1024
DISK_CHECK_SECONDS = 3.0  # a full count at least this often
DISK_TICK_SECONDS = 0.01  # the cheap check: free blocks and inodes of the watched filesystems
DISK_SCAN_SHARE = 0.2  # suspicion counts may stop the session at most this share of its time
FREEZE_WAIT_SECONDS = 0.2  # a process in uninterruptible sleep (I/O) is counted around, not waited for
DISK_REASON = "disk limit exceeded"


def overshoot_mb(limit_mb: float) -> float:
    """How far past disk_mb a session may get before it is stopped (the stated bound)."""
    return limit_mb * 0.1 + 16


def overshoot_inodes(limit: int) -> int:
    """Likewise past disk_inodes."""
    return limit // 10 + 1000


@lru_cache(maxsize=4)
def enforcer(mode: str = "auto") -> Enforcer:
    """Detected once per worker process (ROUTINELY_CGROUPS)."""
    return Enforcer.detect(mode)


def limits_for(environment: Environment | Mapping[str, Any], defaults: Mapping[str, Any]) -> Limits:
    """The routine's environment.limits over the service's (ROUTINELY_SESSION_LIMITS) over the
    built-in defaults. A mapping in the file's shape is validated into an Environment."""
    return Limits(**{**defaults, **Environment.model_validate(environment).limits.given()})


def disk_notice(problem: str) -> str:
    """The worker's start-up line when sessions get no Volume (`problem`: why) and the poll bounds their disk."""
    return (f"routinely: disk limits fall back to counting ({problem}): every {DISK_TICK_SECONDS * 1000:g} ms the "
            "free space of a session's filesystems, and a session that may be past disk_mb or disk_inodes is frozen "
            f"and counted (else every {DISK_CHECK_SECONDS:g} s or less); a fast writer can pass disk_mb by what it "
            "writes in a tick, one file by at most 10 % + 16 MB")


@lru_cache(maxsize=4)
def volume_problem(scratch: Path) -> str | None:
    """None when this host can give sessions a Volume (tried once per process in `scratch`);
    else why not, for disk_notice."""
    if os.geteuid() != 0:
        return "the worker is not root"
    probe = scratch / f"probe-{os.getpid()}"
    try:
        Volume.create(probe.with_suffix(".img"), probe, Limits(disk_mb=1, disk_inodes=100)).remove()
    except OSError as exc:
        return f"no loop-mounted filesystem here: {exc}"
    finally:
        if probe.is_dir() and not os.path.ismount(probe):
            probe.rmdir()
    return None


@dataclass
class DiskUse:
    mb: float = 0.0
    inodes: int = 0
    unreadable: bool = False  # the tree could not be walked whole: counts as past every limit


def disk_use(roots: Iterable[Path], stop: Callable[[], bool] = lambda: False, skip: Iterable[Path] = (),
             pids: Iterable[int] = ()) -> DiskUse:
    """What a session uses on disk: its folders (routinely.disk.tree_use: by folder fds, no
    link followed, a mirror's shared objects free) plus the files `pids` hold open after
    deleting them. A tree that cannot be walked counts as past every limit."""
    tree = disk.tree_use(roots, stop, skip)
    return DiskUse((tree.bytes + _deleted_but_open(pids)) / MB, tree.inodes, tree.unreadable)


def _deleted_but_open(pids: Iterable[int]) -> int:
    """Bytes of plain files the processes hold open after deleting them: disk the session
    still uses though no name shows it."""
    held, seen = 0, set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if st.st_nlink == 0 and stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                held += st.st_blocks * 512
    return held


class Volume:
    """A filesystem of the session's own: ext4 in a sparse file under the data dir,
    loop-mounted where the session writes. The kernel refuses what passes disk_mb and
    disk_inodes by more than the stated bound (ENOSPC), however fast it comes, and its use is
    one statvfs. Set up in ~15 ms and removed in ~5 ms here, whatever it holds. Hard links
    cannot cross into it (a checkout from a mirror copies its objects, or borrows them as
    alternates). Needs root and loop devices."""

    INODE_BYTES = 256
    MARGIN_FILE = "lost+found/.margin"  # root's, out of the session's reach: what the volume holds past the cap

    def __init__(self, image: Path, mountpoint: Path) -> None:
        self.image, self.mountpoint = image, mountpoint
        self.base = DiskUse()
        self.last = DiskUse()

    @classmethod
    def create(cls, image: Path, mountpoint: Path, limits: Limits, owner: tuple[int, int] | None = None) -> "Volume":
        """Make the volume in `image` (a new file) and mount it at `mountpoint` (an empty folder,
        made if missing), its root owned by `owner`. Raises OSError with one line when the host cannot."""
        cap = int((limits.disk_mb + overshoot_mb(limits.disk_mb)) * MB)
        inodes = limits.disk_inodes + overshoot_inodes(limits.disk_inodes)
        size = cap + inodes * cls.INODE_BYTES + cap // 64 + 8 * MB  # + bitmaps, descriptors, slack
        image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(image, "xb") as f:
            f.truncate(size)  # sparse: the host's disk holds only what is written
        volume = cls(image, mountpoint)
        try:
            uid, gid = owner or (os.geteuid(), os.getegid())
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(inodes), "-O", "^has_journal,^resize_inode",
                  "-E", f"lazy_itable_init=1,nodiscard,root_owner={uid}:{gid}", str(image)])
            mountpoint.mkdir(parents=True, exist_ok=True)
            _run(["mount", "-o", "loop,discard,nosuid,nodev,noinit_itable", str(image), str(mountpoint)])
            volume._reserve(cap)
        except BaseException:
            volume.remove()
            raise
        return volume

    def _reserve(self, cap: int) -> None:
        """Take what the filesystem has past `cap` into a root-owned file: the cap is then exact."""
        fs = os.statvfs(self.mountpoint)
        extra = fs.f_bavail * fs.f_frsize - cap
        if extra > 0:
            fd = os.open(self.mountpoint / self.MARGIN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, extra)
            finally:
                os.close(fd)
        self.base = self._used()

    def _used(self) -> DiskUse:
        fs = os.statvfs(self.mountpoint)
        return DiskUse((fs.f_blocks - fs.f_bfree) * fs.f_frsize / MB, fs.f_files - fs.f_ffree)

    def use(self) -> DiskUse:
        """What the session has in the volume (exact, one statvfs); the last figure once removed."""
        if os.path.ismount(self.mountpoint):
            now = self._used()
            self.last = DiskUse(max(0.0, now.mb - self.base.mb), max(0, now.inodes - self.base.inodes))
        return self.last

    def remove(self) -> None:
        """Unmount (detached lazily if something still holds it) and delete the image."""
        if os.path.ismount(self.mountpoint):
            self.use()
            if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        try:
            self.image.unlink()
        except FileNotFoundError:
            pass


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise OSError(f"{argv[0]}: {last}")


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The watched folders without those inside another (each file is counted once)."""
    ordered = sorted(dict.fromkeys(Path(os.path.abspath(p)) for p in paths), key=lambda p: len(p.parts))
    out: list[Path] = []
    for path in ordered:
        if not any(path.is_relative_to(top) for top in out):
            out.append(path)
    return out


def _free(paths: Iterable[Path]) -> dict[int, tuple[int, int]]:
    """Free bytes and inodes of each filesystem the paths are on, by device."""
    out = {}
    for path in paths:
        try:
            dev, fs = os.stat(path).st_dev, os.statvfs(path)
        except OSError:
            continue
        out[dev] = (fs.f_bfree * fs.f_frsize, fs.f_ffree)
    return out


class DiskWatch:
    """Keeps a session within disk_mb and disk_inodes while it runs, in a thread of its own.

    A full count of a big tree takes long (0.4 s per 100,000 files here), so between counts
    the watch reads, every tick, how much the watched filesystems' free space and inodes fell
    since the last count: a fall that could put the session past a limit freezes the
    session's cgroup (nothing is written while it is counted), counts, and then ends it
    (`on_over`) or thaws it. Writes by others on the same filesystem can only cause a count
    too many, never one too few — except frees by others in the same tick, which the plain
    counts catch (every DISK_CHECK_SECONDS, more often as the session nears a limit)."""

    def __init__(self, limits: Limits, cgroup: Cgroup | None, on_over: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.cgroup, self.on_over, self.clock = limits, cgroup, on_over, clock
        self.roots: list[Path] = []  # counted file by file
        self.volumes: list[Volume] = []  # counted by one statvfs each
        self.peak = DiskUse()
        self.reason: str | None = None
        self._lock = threading.Lock()  # one count at a time (the watch's thread, or ended())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = DiskUse()
        self._base: dict[int, tuple[int, int]] = {}
        self._counted_at = 0.0
        self._took = 0.0  # how long the last count took
        self._next_suspect = 0.0

    def add(self, *paths: Path | Volume) -> None:
        self.volumes += [v for v in paths if isinstance(v, Volume) and v not in self.volumes]
        mounts = [Path(os.path.abspath(v.mountpoint)) for v in self.volumes]
        folders = [Path(p) for p in paths if not isinstance(p, Volume)]
        # a folder in a volume is counted by the volume; a volume in a folder is skipped by its count
        self.roots = [p for p in _outermost([*self.roots, *folders]) if not any(p.is_relative_to(m) for m in mounts)]
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="disk-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(DISK_TICK_SECONDS) and self.reason is None:
            now = self.clock()
            if now - self._counted_at >= self._count_every():
                self.count(abortable=True)
                continue
            if now < self._next_suspect:
                continue
            before, fell = self._last, self._fell()
            if before.mb + fell.mb <= self.limits.disk_mb and before.inodes + fell.inodes <= self.limits.disk_inodes:
                continue
            grew = self.count(freeze=True, abortable=True)
            # mostly others' writes: they could make every tick suspect, so the session stays
            # frozen a small share of its time; the session's own: it is counted again next tick
            if (grew.mb - before.mb) * 2 < fell.mb or (grew.inodes - before.inodes) * 2 < fell.inodes:
                self._next_suspect = self.clock() + self._took * (1 / DISK_SCAN_SHARE - 1)

    def _count_every(self) -> float:
        """Seconds between plain counts: DISK_CHECK_SECONDS, less as the session nears a limit
        (others' frees can hide its writes from the tick), but never counting more than a tenth
        of the time."""
        left = min(1 - self._last.mb / self.limits.disk_mb, 1 - self._last.inodes / self.limits.disk_inodes)
        return max(DISK_CHECK_SECONDS * max(left, 0.0), self._took * 10, DISK_TICK_SECONDS)

    def _fell(self) -> DiskUse:
        """How much the watched filesystems' free space and inodes fell since the last count."""
        fell_bytes = fell_inodes = 0
        for dev, (free_bytes, free_inodes) in _free(self._places()).items():
            if dev not in self._base:  # a filesystem mounted since the count (a cached setup's overlay): count now
                return DiskUse(float("inf"), 0)
            base = self._base[dev]
            fell_bytes += max(0, base[0] - free_bytes)
            fell_inodes += max(0, base[1] - free_inodes)
        return DiskUse(fell_bytes / MB, fell_inodes)

    def count(self, freeze: bool = False, abortable: bool = False) -> DiskUse:
        """Count now (`freeze`: with the session stopped meanwhile; `abortable`: cut short by
        close()); past a limit, record the reason and end the session. Returns the use."""
        with self._lock:
            frozen = freeze and self.cgroup is not None
            if frozen:
                self.cgroup.freeze(True, FREEZE_WAIT_SECONDS)
            began = self.clock()
            try:
                base = _free(self._places())  # before counting: what is written meanwhile shows at the next tick
                use = disk_use(self.roots, self._stop.is_set if abortable else lambda: False,
                               pids=self.cgroup.pids() if self.cgroup is not None else (),
                               skip=(os.path.abspath(v.mountpoint) for v in self.volumes))
                for volume in self.volumes:
                    in_volume = volume.use()
                    use = DiskUse(use.mb + in_volume.mb, use.inodes + in_volume.inodes, use.unreadable)
                if abortable and self._stop.is_set():
                    return use  # cut short: says nothing
                self._last, self._base, self._counted_at = use, base, self.clock()
                self._took = self._counted_at - began
                self.peak = DiskUse(max(self.peak.mb, use.mb), max(self.peak.inodes, use.inodes))
                if self.reason is None and (use.unreadable or use.mb > self.limits.disk_mb
                                            or use.inodes > self.limits.disk_inodes):
                    self.reason = DISK_REASON
                    self.on_over()
            finally:
                if frozen and self.cgroup is not None:
                    self.cgroup.freeze(False)
            return use

    def _places(self) -> list[Path]:
        return [*self.roots, *(v.mountpoint for v in self.volumes)]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class Bounds:
    limits: Limits
    enforcer: Enforcer
    name: str
    cgroup: Cgroup | None = None
    disk: DiskWatch | None = None
    reason: str | None = None  # why the session was stopped (a limit), once it was
    stop_hook: Callable[[], None] | None = None  # ends the session where no cgroup can (its uid's processes)
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
        """No one file past the disk bound (however fast it is written); the rest where no cgroup is."""
        # 1 MB under the bound: the folders and small files around it fit in the rest
        one_file = (resource.RLIMIT_FSIZE, int((self.limits.disk_mb + overshoot_mb(self.limits.disk_mb) - 1) * MB))
        return (one_file, *(() if self.cgroup else rlimits(self.limits)))

    # -- while it runs
    def watch(self, *paths: Path | Volume) -> None:
        """Count `paths` (folders the session writes, or its Volume) against disk_mb and disk_inodes from now on."""
        if self.disk is None:
            self.disk = DiskWatch(self.limits, self.cgroup, self._stop)
        self.disk.add(*paths)

    def _stop(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
        elif self.stop_hook is not None:
            self.stop_hook()

    def over(self) -> str | None:
        """The reason to stop the session now (past disk_mb or disk_inodes)."""
        if self.reason is None and self.disk is not None:
            self.reason = self.disk.reason
        return self.reason

    def usage(self) -> Usage:
        if self._final is not None:
            return self._final
        return self.cgroup.usage() if self.cgroup else Usage()

    def ended(self) -> str | None:
        """After a command: the reason when a limit stopped it (memory, disk), else None.
        Counts the disk once more: a command that ended by itself may have just passed it."""
        if self.reason is None and self.disk is not None and self.disk.reason is None:
            self.disk.count()
        if self.over():
            return self.reason
        if self.usage().oom_kills > 0:
            self.reason = f"out of memory (limit {self.limits.memory_mb} MB)"
        return self.reason

    @property
    def disk_peak_mb(self) -> float:
        return self.disk.peak.mb if self.disk is not None else 0.0

    def resources(self) -> dict[str, float | int | None]:
        """`resources` of the session: what users size their limits by."""
        if self.disk is not None:
            self.disk.count()
        measured = self.cgroup is not None
        use = self.usage()
        return {"memory_peak_mb": round(use.memory_peak_mb, 1) if measured else None,
                "cpu_seconds": round(use.cpu_seconds, 2) if measured else None,
                "pids_peak": use.pids_peak if measured else None,
                "disk_mb": round(self.disk_peak_mb, 1)}

    def close(self) -> bool:
        """Stop the disk watch, kill whatever is left in the session's cgroup and remove it;
        False if it stayed."""
        if self.disk is not None:
            self.disk.close()
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
