"""What a push carries, read before the push door takes a ref: no value of the session's
secrets, and no token of a known shape, in any commit it adds.

The push door's pre-receive hook hands the pushed updates to the worker (workers/pushguard.py);
the worker lists the objects the push adds (`git rev-list --objects NEW --not --all`, in the
relay, with the push's quarantined objects) and reads every blob, commit and tag among them
(`git cat-file --batch`) — at most MAX_SCAN_BYTES a push, past which the push is refused
rather than passed unread. Each finding names the file (or the commit) and the line, never
the value. git runs with the worker's fixed environment (workers.git.worker_env).
"""
from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from routinely.secrets.redact import MIN_CHARS

MAX_SCAN_BYTES = 64 * 1024 * 1024  # new objects' bytes read per push
MAX_SCAN_OBJECTS = 100_000  # new objects (trees included) listed per push: what the worker holds of it stays bounded
MAX_FINDINGS = 5  # named in the refusal; the rest are counted
ZERO = "0" * 40

# shapes of credentials that have no business in a commit, whatever the session was given
TOKEN_SHAPES: list[tuple[str, str]] = [
    # a prefix and enough characters: what follows (more characters, a suffix) never hides one
    ("a GitHub token", r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36}"),
    ("a GitHub fine-grained token", r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22}"),
    ("an Anthropic API key", r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}"),
    ("an AWS access key id", r"(?<![A-Z0-9])AKIA[0-9A-Z]{16}(?![0-9A-Z])"),
]


class ScanRefused(Exception):
    """The push is refused; str() is the line the agent sees."""


@dataclass(frozen=True)
class Finding:
    where: str  # a path, or "commit abc1234"
    line: int
    what: str  # "secret NAME" or a token shape's name

    def __str__(self) -> str:
        return f"{self.where} line {self.line} holds {self.what}"


class Scanner:
    def __init__(self, secrets: Mapping[str, str]) -> None:
        """`secrets`: name -> value (values shorter than redact.MIN_CHARS are not looked for)."""
        self._names: dict[bytes, str] = {}
        for name, value in secrets.items():
            if value and len(value) >= MIN_CHARS:
                self._names.setdefault(value.encode(), name)
        parts = [f"(?P<s>{'|'.join(re.escape(v.decode('latin-1')) for v in sorted(self._names, key=len, reverse=True))})"] \
            if self._names else []
        parts += [f"(?P<t{i}>{shape})" for i, (_, shape) in enumerate(TOKEN_SHAPES)]
        self._pattern = re.compile("|".join(parts).encode("latin-1"))

    def scan(self, data: bytes, where: str) -> list[Finding]:
        found = []
        for match in self._pattern.finditer(data):
            line = data.count(b"\n", 0, match.start()) + 1
            secret = match.groupdict().get("s")
            if secret:
                what = f"secret {self._names[secret]}"
            else:
                what = next(TOKEN_SHAPES[int(k[1:])][0] for k, v in match.groupdict().items() if v and k != "s")
            found.append(Finding(where, line, what))
            if len(found) >= MAX_FINDINGS:
                break
        return found

    def push(self, repo: Path, env: dict[str, str], updates: list[tuple[str, str, str]]) -> list[Finding]:
        """What the updates (old, new, ref) add that carries a secret. Raises ScanRefused when
        the objects cannot be listed or pass MAX_SCAN_BYTES."""
        objects: dict[str, str] = {}  # sha -> path ("" for commits, tags, the root tree)
        for _old, new, _ref in updates:
            if new == ZERO:
                continue
            lister = subprocess.Popen(["git", "rev-list", "--objects", new, "--not", "--all"], cwd=repo, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            try:  # read as it comes, up to the cap: a push of a million tiny objects never sits in the worker whole
                for raw in lister.stdout:
                    sha, _, path = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
                    objects.setdefault(sha, path)
                    if len(objects) > MAX_SCAN_OBJECTS:
                        raise ScanRefused(f"this push adds more than {MAX_SCAN_OBJECTS:,} objects; the push door checks "
                                          "at most that many a push for secrets: push it in smaller pieces")
            finally:
                lister.kill()
                lister.wait(300)
            if lister.returncode not in (0, -9):
                raise ScanRefused("the push door could not list what this push adds")
        if not objects:
            return []
        findings: list[Finding] = []
        for path in {path for path in objects.values() if path}:  # names too: a file may be named after a value
            findings += self.scan(path.encode(), "a file or folder name")  # never the name itself: it may be the value
        kinds = _batch(repo, env, ["--batch-check=%(objectname) %(objecttype) %(objectsize)"], list(objects))
        wanted, total = [], 0
        for line in kinds.decode().splitlines():
            sha, kind, size = line.split(" ")
            if kind in ("blob", "commit", "tag"):
                wanted.append((sha, kind))
                total += int(size)
        if total > MAX_SCAN_BYTES:
            raise ScanRefused(f"this push adds {total / 2**20:.0f} MB of new files; the push door reads at most "
                              f"{MAX_SCAN_BYTES // 2**20} MB a push for secrets: push it in smaller pieces")
        contents = _batch(repo, env, ["--batch"], [sha for sha, _ in wanted])
        at = 0
        for sha, kind in wanted:
            head_end = contents.index(b"\n", at)
            size = int(contents[at:head_end].split(b" ")[2])
            data = contents[head_end + 1:head_end + 1 + size]
            at = head_end + 1 + size + 1
            where = objects[sha] if kind == "blob" else f"{kind} {sha[:12]}"
            findings += self.scan(data, where or sha[:12])
        return findings


def _batch(repo: Path, env: dict[str, str], args: list[str], shas: list[str]) -> bytes:
    """cat-file's answer for `shas` (fed from a thread: neither pipe can fill and stall the other)."""
    proc = subprocess.Popen(["git", "cat-file", *args], cwd=repo, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def feed() -> None:
        try:
            proc.stdin.write("".join(sha + "\n" for sha in shas).encode())
        except OSError:
            pass
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = proc.stdout.read()
    proc.wait(300)
    writer.join(10)
    if proc.returncode != 0:
        raise ScanRefused("the push door could not read what this push adds")
    return out


def refusal(ref: str, findings: list[Finding]) -> str:
    """The agent's line for a refused ref: where, never what."""
    named = "; ".join(str(f) for f in findings[:MAX_FINDINGS]) + ("; and more" if len(findings) > MAX_FINDINGS else "")
    return (f"routinely: push to {ref} refused: its commits carry a credential ({named}); remove it from "
            "every commit (rewrite them, e.g. `git commit --amend` or an interactive rebase) and push again")
