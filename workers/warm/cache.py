"""The setup cache's index on this host: which snapshot of a setup result stands for which key.

Read by warm start (which makes and mounts snapshots) and by the CLI (`routinely cache
list|clear`, which imports nothing else of the worker), so it is plain files under the data dir:

    <data_dir>/cache/entries/<key>.json   one entry per key (written whole, renamed into place)
    <data_dir>/cache/snapshots/<name>/    the snapshot: a workspace as setup left it (immutable)
    <data_dir>/cache/locks/<name>.lock    shared flock held by every session using the snapshot
    <data_dir>/cache/index.lock           exclusive flock around publish, eviction and clearing

A snapshot is deleted only under an exclusive flock of its lock file, so never while a
session's overlay stands on it; one that is still in use when its entry goes (evicted,
replaced, cleared) is deleted by `collect()` once its last session ends.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from routinely import disk
from routinely.when import iso

DEFAULT_TTL_HOURS = 12


@dataclass
class Entry:
    key: str
    routine: str  # account/name
    snapshot: str  # folder name under snapshots/
    created_at: float
    used_at: float
    owner: list[int] | None  # uid, gid of the files setup wrote (None: the worker's own)
    checkouts: dict[str, str]  # repo -> folder name in the workspace
    heads: dict[str, str]  # repo -> commit the checkout is at
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # repo -> origin's refs then
    size_bytes: int | None = None  # measured after the session that made it
    setup_seconds: float | None = None
    expires_at: float | None = None  # created_at + the routine's cache_ttl_hours

    @property
    def short(self) -> str:
        return self.key[:8] + "…"


class Hold:
    """A session's use of a snapshot: a shared flock, released by close()."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SetupCache:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "cache"
        self.entries_dir = self.root / "entries"
        self.snapshots_dir = self.root / "snapshots"
        self.locks_dir = self.root / "locks"

    def ensure(self) -> None:
        for folder in (self.root, self.entries_dir, self.snapshots_dir, self.locks_dir, self.root / "trash"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # nothing of a session may reach a snapshot by its path

    # -- reading
    def entries(self, routine: str | None = None) -> list[Entry]:
        """Every entry, or a routine's (by NAME or ACCOUNT/NAME), in key order."""
        out = []
        try:
            names = sorted(os.listdir(self.entries_dir))
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(".json"):
                entry = self._read(self.entries_dir / name)
                if entry and (routine is None or routine in (entry.routine, entry.routine.split("/", 1)[-1])):
                    out.append(entry)
        return out

    def _read(self, path: Path) -> Entry | None:
        try:
            return Entry(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def lookup(self, key: str, ttl_hours: float, now: float) -> Entry | None:
        entry = self._read(self.entries_dir / f"{key}.json")
        if entry is None or now - entry.created_at > ttl_hours * 3600:
            return None
        return entry

    @staticmethod
    def expired(entry: Entry, now: float) -> bool:
        return entry.expires_at is not None and now > entry.expires_at

    def snapshot_path(self, entry_or_name: Entry | str) -> Path:
        name = entry_or_name.snapshot if isinstance(entry_or_name, Entry) else entry_or_name
        return self.snapshots_dir / name

    # -- using
    def use(self, entry: Entry, now: float) -> Hold | None:
        """Hold the entry's snapshot for a session; None when it went meanwhile (a miss)."""
        fd = os.open(self.locks_dir / f"{entry.snapshot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not self.snapshot_path(entry).is_dir():  # deleted between lookup and lock
            os.close(fd)
            return None
        with self._index():
            current = self._read(self.entries_dir / f"{entry.key}.json")
            if current is not None and current.snapshot == entry.snapshot:
                current.used_at = now
                self._write(current)
        return Hold(fd)

    def new_snapshot(self, key: str) -> tuple[str, Hold]:
        """A fresh snapshot name, already held by the caller (nothing deletes it under them)."""
        self.ensure()
        name = f"{key[:16]}-{uuid.uuid4().hex[:8]}"
        fd = os.open(self.locks_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return name, Hold(fd)

    # -- changing
    def publish(self, entry: Entry) -> None:
        """Make `entry` the one for its key (a concurrent publisher's may win: both are whole)."""
        with self._index():
            self._write(entry)

    def record_size(self, entry: Entry) -> None:
        with self._index():
            current = self._read(self.entries_dir / f"{entry.key}.json")
            if current is not None and current.snapshot == entry.snapshot:
                current.size_bytes = entry.size_bytes = disk_usage(self.snapshot_path(entry))
                self._write(current)

    def evict(self, cap_bytes: float, now: float) -> list[Entry]:
        """Drop expired entries, then least recently used ones until the measured rest fit
        under `cap_bytes`."""
        evicted = []
        with self._index():
            entries = sorted(self.entries(), key=lambda e: (not self.expired(e, now), e.used_at))
            total = sum(e.size_bytes or 0 for e in entries)
            for entry in entries:
                if total <= cap_bytes and not self.expired(entry, now):
                    break
                (self.entries_dir / f"{entry.key}.json").unlink(missing_ok=True)
                total -= entry.size_bytes or 0
                evicted.append(entry)
        self.collect()
        return evicted

    def clear(self, routine: str | None = None) -> list[Entry]:
        with self._index():
            gone = self.entries(routine)
            for entry in gone:
                (self.entries_dir / f"{entry.key}.json").unlink(missing_ok=True)
        self.collect()
        return gone

    def collect(self) -> list[str]:
        """Delete snapshots no entry names and no session holds; returns those still held."""
        if not self.snapshots_dir.is_dir():
            return []
        held = []
        with self._index():
            named = {e.snapshot for e in self.entries()}
            for name in os.listdir(self.snapshots_dir):
                if name in named:
                    continue
                if not self._delete(name):
                    held.append(name)
            for name in os.listdir(self.root / "trash"):  # a deletion a crash interrupted
                shutil.rmtree(self.root / "trash" / name, ignore_errors=True)
        return held

    def _delete(self, name: str) -> bool:
        # a snapshot still being copied (NAME.part) is held under its final name's lock
        lock = self.locks_dir / f"{name.removesuffix('.part')}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a session's overlay stands on it
            trash = self.root / "trash" / f"{name}.{uuid.uuid4().hex[:6]}"
            try:
                os.rename(self.snapshots_dir / name, trash)
            except FileNotFoundError:
                pass
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _write(self, entry: Entry) -> None:
        tmp = self.entries_dir / f".{entry.key}.{uuid.uuid4().hex[:6]}"
        tmp.write_text(json.dumps(asdict(entry)))
        os.rename(tmp, self.entries_dir / f"{entry.key}.json")

    @contextmanager
    def _index(self) -> Iterator[None]:
        self.ensure()
        fd = os.open(self.root / "index.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def public(entry: Entry, now: float) -> dict:
    """An entry as `routinely cache list --json` prints it."""
    return {"key": entry.key, "routine": entry.routine, "created_at": iso(entry.created_at),
            "used_at": iso(entry.used_at), "age": age(now - entry.created_at), "size_bytes": entry.size_bytes,
            "heads": entry.heads, "setup_seconds": entry.setup_seconds}


def disk_usage(path: Path) -> int:
    """Bytes on disk under `path`, counted as a session's disk is (routinely.disk), so a
    snapshot cannot hide its size from the cache's cap."""
    return disk.tree_use([path]).bytes


def age(seconds: float) -> str:
    """`40 s`, `12 min`, `2 h` — how old an entry is, for logs and listings."""
    if seconds < 90:
        return f"{max(0, int(seconds))} s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min"
    return f"{seconds / 3600:.0f} h"

