"""Running git for the worker: one way in, with settings passed through the environment only
(never written to a repository's config) and, for checkouts, as the session's user.

The worker runs git only in repositories it alone writes; what a session wrote (a cached
setup's checkouts) is read as data (`read_head`) or handled inside the session's sandbox."""
from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from workers import session_files

Ids = tuple[int, int]


def base_env(home: str | None = None) -> dict[str, str]:
    """No prompts, no system or user config leaking in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home or os.environ.get("HOME", "/"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LANG": "C.UTF-8",
    }


def config_env(pairs: list[tuple[str, str]]) -> dict[str, str]:
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def worker_env(token: str | None = None, remote: str | None = None) -> dict[str, str]:
    """The worker's own git, for repositories only the worker writes (mirrors, relays, fresh
    clones): a token travels as a header; with `remote`, git may speak only that remote's
    protocol. Never for a repository a session has written (see `read_head`)."""
    pairs: list[tuple[str, str]] = [("core.hooksPath", os.devnull), ("core.fsmonitor", "false")]
    if remote:
        scheme = urlsplit(remote).scheme or "file"
        pairs += [("protocol.allow", "never"), (f"protocol.{scheme}.allow", "always")]
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


_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_REF = re.compile(r"^refs/heads/[A-Za-z0-9._/-]{1,200}$")


def read_head(checkout: Path) -> str:
    """The commit a checkout's HEAD names, read as data (no git, no link followed on the way:
    workers.session_files); "" when it cannot be told — the caller then treats it as moved."""
    try:
        head = session_files.read_text(checkout, ".git/HEAD").strip()
        if _SHA.match(head):
            return head
        ref = head.removeprefix("ref: ")
        if ref == head or not _REF.match(ref) or ".." in ref:
            return ""
        try:
            sha = session_files.read_text(checkout, f".git/{ref}").strip()
        except FileNotFoundError:
            packed = session_files.read_text(checkout, ".git/packed-refs")
            sha = next((line.split(" ", 1)[0] for line in packed.splitlines() if line.endswith(" " + ref)), "")
        return sha if _SHA.match(sha) else ""
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
