"""Files a session wrote, opened by the worker (root) as data.

Below a workspace's root every folder and file may be what a session (or, on a warm start,
an earlier session) left: a link to `/etc`, a hard link to a file it cannot write. The worker
opens such paths one step at a time from a folder it trusts, following no link, and refuses
anything but a plain file of one name — the one way it reads or writes there.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

READ_LIMIT = 1 << 20


def _parts(relative: str) -> tuple[str, ...]:
    parts = Path(relative).parts
    if not parts or any(p in ("", ".", "..") or "/" in p for p in parts):
        raise ValueError(f"not a path below the root: {relative!r}")
    return parts


def open_below(root: Path, relative: str, flags: int, mode: int = 0o600,
               make_folders: tuple[int, int] | None | bool = False) -> int:
    """An fd for `root/relative`, opened with `flags` (plus O_NOFOLLOW) and no link followed on
    the way. `make_folders` (for writing): make missing folders (0700, owned by these ids when
    given), and put a fresh folder or file in place of a link or hard link found where one
    goes — only the name is removed, never what it points at. Raises OSError (ELOOP for a
    link, EPERM for what is not a plain file) or ValueError for a path that leaves the root."""
    parts = _parts(relative)
    writing = make_folders is not False
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            if writing:
                _make_folder(folder, name, make_folders if isinstance(make_folders, tuple) else None)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            os.close(folder)
            folder = inner
        if writing and _not_plain(folder, parts[-1]):
            os.unlink(parts[-1], dir_fd=folder)
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=folder)
    finally:
        os.close(folder)
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EPERM, f"{relative} is not a plain file")
    return fd


def _make_folder(folder: int, name: str, ids: tuple[int, int] | None) -> None:
    try:
        found = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        found = None
    if found is not None and stat.S_ISDIR(found.st_mode):
        return
    if found is not None:  # a link or a file where a folder goes: the name goes, not its target
        os.unlink(name, dir_fd=folder)
    os.mkdir(name, 0o700, dir_fd=folder)
    if ids:
        os.chown(name, *ids, dir_fd=folder, follow_symlinks=False)


def _not_plain(folder: int, name: str) -> bool:
    """Something other than a plain file of one name stands at `name` (a link, a hard link)."""
    try:
        found = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(found.st_mode) or found.st_nlink != 1


def read_text(root: Path, relative: str, limit: int = READ_LIMIT) -> str:
    """A small text file below `root`, read as data."""
    fd = open_below(root, relative, os.O_RDONLY)
    try:
        return os.read(fd, limit).decode()
    finally:
        os.close(fd)


def write(root: Path, relative: str, data: bytes, mode: int = 0o600, ids: tuple[int, int] | None = None) -> None:
    """Create or replace a file below `root` (missing folders made, 0700), owned by `ids`."""
    fd = open_below(root, relative, os.O_WRONLY | os.O_CREAT, mode, make_folders=ids or True)
    with os.fdopen(fd, "wb") as file:
        os.ftruncate(fd, 0)
        os.fchmod(fd, mode)
        if ids:
            os.fchown(fd, *ids)
        file.write(data)
