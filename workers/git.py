"""Running git for the worker: one way in, with settings passed through the environment only
(never written to a repository's config) and, for checkouts, as the session's user."""
from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

Ids = tuple[int, int]


def base_env(home: str | None = None) -> dict[str, str]:
    """No prompts, no system or user config leaking in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home or os.environ.get("HOME", "/"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LANG": "C.UTF-8",
    }


def config_env(pairs: list[tuple[str, str]]) -> dict[str, str]:
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def worker_env(token: str | None = None) -> dict[str, str]:
    """The worker's own git: relays may belong to a session user; a token travels as a header."""
    pairs = [("safe.directory", "*")]
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        pairs.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    return {**base_env(), **config_env(pairs)}


def run(args: list[str], env: dict[str, str], cwd: Path | None = None, ids: Ids | None = None) -> subprocess.CompletedProcess:
    user = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, **user)


def chown_tree(path: Path, ids: Ids) -> None:
    """Give a tree to a session's user — except files hard-linked from elsewhere (a mirror's
    read-only object files): giving those away would let the session change the original."""
    os.chown(path, *ids)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chown(os.path.join(root, name), *ids, follow_symlinks=False)
        for name in files:
            full = os.path.join(root, name)
            if os.lstat(full).st_nlink == 1:
                os.chown(full, *ids, follow_symlinks=False)


def clean_error(stderr: str) -> str:
    """git's error, one line, with any credential in a URL masked."""
    line = " ".join(stderr.strip().splitlines()[-2:]) or "git failed"
    return re.sub(r"://[^@/\s]+@", "://***@", line)
