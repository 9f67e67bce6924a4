"""Mounting a snapshot under a session: kernel overlayfs on the host, the snapshot as its
read-only lower layer, the session's own upper layer taking every write.

When the snapshot's files belong to another uid than the session's (each session has a uid
of its own), the lower layer is an idmapped mount of the snapshot (open_tree + mount_setattr,
Linux ≥ 5.12) so the session sees them as its own and copy-up gives it files it owns —
without touching one file of the snapshot. The worker must be root for any of this;
`available()` says whether this host can, once per process.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and arm64 alike
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, 0o2000000
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_IDMAP = 0x1, 0x100000
_MNT_DETACH = 2


class OverlayError(Exception):
    """A mount failed; str() says which and why."""


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OverlayError(f"{what}: {os.strerror(errno)}")
    return result


def _userns(inner: tuple[int, int], outer: tuple[int, int]) -> int:
    """An fd of a user namespace mapping uid/gid `inner` (on disk) to `outer` (seen).

    A short-lived `unshare --user` process owns the namespace while its fd is opened
    (fork+exec: safe in the worker's threads, unlike a bare fork)."""
    holder = subprocess.Popen(["unshare", "--user", "--", "sleep", "30"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ours = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{holder.pid}/ns/user") == ours:
            if holder.poll() is not None or time.monotonic() > deadline:
                raise OverlayError("cannot make an id mapping: unshare --user did not start")
            time.sleep(0.0005)
        Path(f"/proc/{holder.pid}/uid_map").write_text(f"{inner[0]} {outer[0]} 1\n")
        Path(f"/proc/{holder.pid}/setgroups").write_text("deny")
        Path(f"/proc/{holder.pid}/gid_map").write_text(f"{inner[1]} {outer[1]} 1\n")
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OverlayError(f"cannot make an id mapping: {exc.strerror}") from None
    finally:
        holder.kill()
        holder.wait()


def idmapped_view(source: Path, target: Path, inner: tuple[int, int], outer: tuple[int, int]) -> None:
    """Mount `source` read-only at `target` with files of `inner` shown as `outer`."""
    tree = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, str(source).encode(),
                                _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE), "open_tree")
    try:
        ns = _userns(inner, outer)
        try:
            attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY, 0, 0, ns)
            _check(_libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH | _AT_RECURSIVE,
                                 ctypes.byref(attr), ctypes.sizeof(attr)), "idmapped mount")
        finally:
            os.close(ns)
        _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, str(target).encode(),
                             _MOVE_MOUNT_F_EMPTY_PATH), "move_mount")
    finally:
        os.close(tree)


def mount(lower: Path, upper: Path, work: Path, target: Path) -> None:
    """Overlay `lower` (read-only) under `upper` at `target`. Raises OverlayError."""
    options = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=on"
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options.encode()) != 0:
        raise OverlayError(f"overlay mount failed: {os.strerror(ctypes.get_errno())}")


def unmount(target: Path) -> None:
    """Detach `target` (lazily when something still holds it, so cleanup never hangs)."""
    if _libc.umount2(str(target).encode(), 0) != 0:
        _libc.umount2(str(target).encode(), _MNT_DETACH)


def is_mount(path: Path) -> bool:
    return os.path.ismount(path)


@lru_cache(maxsize=None)
def available(scratch: Path, idmap: bool) -> str | None:
    """None when this host can mount an overlay (over an idmapped lower with `idmap`);
    else the reason, for the session log."""
    if os.geteuid() != 0:
        return "the worker is not root"
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = Path(tempfile.mkdtemp(prefix="probe-", dir=scratch))
    try:
        for sub in ("lower", "stage", "upper", "work", "merged"):
            (base / sub).mkdir()
        (base / "lower" / "f").write_text("x")
        lower = base / "lower"
        try:
            if idmap:
                os.chown(base / "lower" / "f", 1, 1)
                idmapped_view(lower, base / "stage", (1, 1), (2, 2))
                lower = base / "stage"
            try:
                mount(lower, base / "upper", base / "work", base / "merged")
                ok = (base / "merged" / "f").stat().st_uid == (2 if idmap else 0)
                unmount(base / "merged")
            finally:
                if idmap:
                    unmount(base / "stage")
        except OverlayError as exc:
            return str(exc)
        return None if ok else "the idmapped lower layer did not show the session's uid"
    finally:
        shutil.rmtree(base, ignore_errors=True)
