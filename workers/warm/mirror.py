"""One bare mirror per repository on this host, fetched when a session needs it.

Concurrent sessions share a fetch: they queue on the mirror's flock, and whoever gets it
after a fetch that started since they asked (or within FRESH_SECONDS) reuses that one.
The mirror holds the remote's branches and tags only (no pull request refs), is never
garbage-collected (checkouts and snapshots hard-link its object files) and its object files
are world-readable but root-owned and read-only: the folder above it is root's alone, and
a checkout reaches its objects only through the hard links the worker made for it.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from workers import git
from workers.pushguard import PushError

FRESH_SECONDS = 2.0  # a burst of sessions from one event shares one fetch
REFSPECS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
STAMP = "routinely-fetched"  # its mtime: when the last good fetch started


@dataclass
class Mirror:
    repo: str
    path: Path
    branch: str  # the default branch
    head: str  # its commit
    action: str  # created | fetched | reused
    seconds: float  # how long the fetch took, or how old the reused one is

    def describe(self) -> str:
        if self.action == "reused":
            return f"mirror of {self.repo} reused (fetched {self.seconds:.1f} s ago)"
        return f"mirror of {self.repo} {self.action} in {self.seconds:.2f} s"


class Mirrors:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "mirrors"

    def refresh(self, repo: str, url: str, token: Callable[[], str | None]) -> Mirror:
        """The mirror of `repo`, fetched unless a fresh enough fetch exists. Raises PushError."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        path = self.root / (repo.replace("/", "__") + ".git")
        asked = time.time()
        with _locked(self.root / (path.name + ".lock")):
            stamp = path / STAMP
            last = stamp.stat().st_mtime if stamp.exists() else None
            if last is not None and (last >= asked or asked - last < FRESH_SECONDS):
                action, seconds = "reused", time.time() - last
            else:
                began = time.time()
                env = git.worker_env(token())
                if last is None:
                    self._create(repo, url, path, env)
                    action = "created"
                else:
                    done = git.run(["fetch", "--quiet", "--prune", "--no-write-fetch-head", url, *REFSPECS], env, path)
                    if done.returncode != 0:
                        raise PushError(f"cannot fetch {repo}: {git.clean_error(done.stderr)}")
                    action = "fetched"
                stamp.touch()
                os.utime(stamp, (began, began))
                seconds = time.time() - began
            # HEAD of a bare repository we made is always "ref: refs/heads/NAME": read, not run
            branch = (path / "HEAD").read_text().strip().removeprefix("ref: refs/heads/")
            head = git.run(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], git.worker_env(), path).stdout.strip()
        return Mirror(repo, path, branch, head, action, seconds)

    def _create(self, repo: str, url: str, path: Path, env: dict[str, str]) -> None:
        tmp = path.with_name(path.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        done = git.run(["clone", "--bare", "--quiet", url, str(tmp)], env)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PushError(f"cannot clone {repo}: {git.clean_error(done.stderr)}")
        shutil.rmtree(path, ignore_errors=True)  # a mirror without its stamp: half made before
        plain = git.worker_env()
        for key, value in (("gc.auto", "0"), ("core.sharedRepository", "0644"), ("fetch.unpackLimit", "1"),
                           ("receive.unpackLimit", "1")):
            git.run(["config", key, value], plain, tmp)
        _readable(tmp)
        os.rename(tmp, path)


def _readable(path: Path) -> None:
    """Object files readable by the session users their hard links are given to."""
    for root, dirs, files in os.walk(path / "objects"):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
