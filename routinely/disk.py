"""How much disk a tree uses, counted as the kernel sees it and safe against what a session
can build: walked by folder fds (no path is too deep to count), no link followed, a file
with several links once, and root's multi-link files (a host mirror's object files that
checkouts share) not at all. The session's disk limit and the setup cache's size both count
this way, so neither can be walked around.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

# errors that mean the walk could not see the whole tree (not a file vanishing meanwhile)
_BLIND = (errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG, errno.ENOMEM)


@dataclass(frozen=True)
class TreeUse:
    bytes: int = 0  # blocks, not apparent sizes
    inodes: int = 0
    unreadable: bool = False  # part of the tree could not be walked: count it as past any limit


def tree_use(roots: Iterable[Path], stop: Callable[[], bool] = lambda: False, skip: Iterable[Path] = ()) -> TreeUse:
    """Space and inodes under `roots`, not entering the folders `skip`. Gives up early (with
    what it counted) once `stop()` is true."""
    skipped = set()
    for path in skip:
        try:
            st = os.stat(path)
        except OSError:
            continue
        skipped.add((st.st_dev, st.st_ino))
    total = count = 0
    seen: set[tuple[int, int]] = set()  # only files with several links can be met twice
    blind: list[OSError] = []

    def note(exc: OSError) -> None:
        if exc.errno in _BLIND:
            blind.append(exc)

    for root in roots:
        try:
            for _, dirs, files, folder in os.fwalk(root, topdown=True, onerror=note, follow_symlinks=False):
                if stop():
                    return TreeUse(total, count)
                for name in list(dirs):
                    try:
                        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    except OSError:
                        dirs.remove(name)
                        continue
                    if (st.st_dev, st.st_ino) in skipped:
                        dirs.remove(name)
                        continue
                    total += st.st_blocks * 512
                    count += 1
                for name in files:
                    try:
                        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    except OSError:
                        continue
                    if st.st_nlink > 1:
                        if st.st_uid == 0 or (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
                    count += 1
        except OSError as exc:
            note(exc)
    return TreeUse(total, count, bool(blind))
