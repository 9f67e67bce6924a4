"""Can this host build the sandbox? Asked once per worker, at start-up (fail closed)."""
from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache

HOW = ("enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 and "
       "user.max_user_namespaces > 0; in a container: --security-opt seccomp=unconfined --security-opt apparmor=unconfined "
       "--security-opt systempaths=unconfined, see deploy/README.md) "
       "or set ROUTINELY_SANDBOX=off to run sessions unsandboxed")
PROBE_UID = 65534  # nobody: the sandbox starts unprivileged, so the check does too


def bwrap() -> str | None:
    """bubblewrap as found on the worker's PATH."""
    return shutil.which("bwrap")


def python() -> str:
    """The interpreter that runs the launcher inside: the system's, which every session can read."""
    return shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@lru_cache(maxsize=4)
def problem(as_session_user: bool, path: str | None = None) -> str | None:
    """None when bwrap builds a sandbox here; otherwise the one line that says what to do.

    `path` is the worker's PATH (part of the cache key: bwrap is looked up on it)."""
    if bwrap() is None:
        return "routinely: the session sandbox needs bubblewrap (`bwrap`): apt-get install bubblewrap, or set ROUTINELY_SANDBOX=off to run sessions unsandboxed"
    if not os.path.exists(python()):
        return "routinely: the session sandbox runs its launcher with the system's python3 (/usr/bin/python3): apt-get install python3-minimal, or set ROUTINELY_SANDBOX=off"
    # the namespaces and mounts every session asks for (workers/sandbox/bwrap.py): a host that
    # builds this probe but not a session's sandbox would start a worker whose sessions all fail
    argv = [bwrap(), "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--hostname", "routinely", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev", "--", python(), "-c", "pass"]
    user = {"user": PROBE_UID, "group": PROBE_UID, "extra_groups": []} if as_session_user else {}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, **user)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"routinely: bwrap cannot start here ({exc}): {HOW}"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]
        return f"routinely: bwrap cannot build the session sandbox on this host ({why}): {HOW}"
    return None
