"""No process started by the tests may outlive them: read from /proc, not trusted to the code.

pytest makes itself a child subreaper, so an orphan (a daemon, or an agent's child whose
worker was SIGKILLed) is re-parented to pytest instead of init and still counts as ours.
Session users' processes (uids 200000-299999) that carry this run's temporary folder in
their environment count too, wherever they went. Zombies do not count: they are gone.
"""
from __future__ import annotations

import ctypes
import os
import time

from workers.leftovers import kill  # noqa: F401 (the guard ends what it finds the way the reaper does)
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
SESSION_UIDS = range(200_000, 300_000)


def become_subreaper() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _stat(pid: str) -> tuple[int, str] | None:
    """(parent pid, state) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def ours(marker: str, root: int | None = None) -> set[int]:
    """Live processes below `root` (this process), and session-uid processes that mention `marker`."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    live: set[int] = set()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(entry)
        if st is None:
            continue
        pid = int(entry)
        parents[pid] = st[0]
        if st[1] != "Z":
            live.add(pid)
        try:
            if os.stat(f"/proc/{entry}").st_uid in SESSION_UIDS and marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                found.add(pid)
        except OSError:
            pass
    for pid in live:
        p, seen = parents.get(pid), 0
        while p and seen < 64:
            if p == root:
                found.add(pid)
                break
            p, seen = parents.get(p), seen + 1
    return found & live


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return f"{pid} (gone)"
    return f"pid {pid} uid {uid}: {cmd[:200]}"


def survivors(baseline: set[int], marker: str, wait: float) -> list[int]:
    """What is still alive of ours after `wait` seconds (processes being stopped get that long)."""
    end = time.monotonic() + wait
    while True:
        left = sorted(ours(marker) - baseline)
        if not left or time.monotonic() >= end:
            return left
        time.sleep(0.1)


