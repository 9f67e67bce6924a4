"""What a session can leave on its host when its worker dies: processes, a workspace, a relay.

Processes are found through /proc: anything that still carries the session's id in its
environment (everything the runner starts does, unless it scrubs it) or works inside the
session's workspace. Until sessions live in a PID namespace of their own (workers/sandbox),
this is how the reaper makes sure no orphan of a dead worker's session survives.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path


def session_processes(session_id: str, workspace: Path) -> list[int]:
    marker = f"ROUTINELY_SESSION_ID={session_id}".encode()
    root = str(workspace)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if marker in env or cwd == root or cwd.startswith(root + "/"):
            found.append(int(entry.name))
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def clean(session_id: str, data_dir: Path) -> None:
    """SIGKILL the session's processes on this host, unmount what the dead worker left mounted
    (workers/warm), then remove the workspace and relay."""
    from workers.warm import sweep

    workspace = data_dir / "workspaces" / session_id
    for _ in range(3):  # a process may fork while we look
        pids = session_processes(session_id, workspace)
        if not pids:
            break
        kill(pids)
        time.sleep(0.05)  # SIGKILL is asynchronous: a mount in use does not unmount
    sweep(data_dir)
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(data_dir / "relays" / session_id, ignore_errors=True)
