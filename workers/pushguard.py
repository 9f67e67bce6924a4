"""Push guard: a checkout's `origin` is a relay repository the worker owns, outside the workspace.

The relay's pre-receive hook refuses refs outside the routine's branch_prefix and says why;
its post-receive hook asks the worker (over a unix socket) to forward. The worker is the
authority: it forwards only allowed refs that changed, with a credential the agent never
sees, and does a last sync when the session ends. An agent that pushes with --no-verify,
deletes its hooks, edits its git config or even the relay's hooks cannot get a ref outside
the prefix onto the real remote.
"""
from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PRE_RECEIVE = """#!{python}
import sys
prefix, unrestricted = {prefix!r}, {unrestricted!r}
refused = []
for line in sys.stdin:
    old, new, ref = line.split()
    ok = ref.startswith(("refs/heads/", "refs/tags/")) if unrestricted else ref.startswith("refs/heads/" + prefix)
    if not ok:
        refused.append(ref)
for ref in refused:
    print(f"routinely: push to {{ref}} refused: this routine may push only to branches under '{{prefix}}' (its branch_prefix)")
sys.exit(1 if refused else 0)
"""

POST_RECEIVE = """#!{python}
import socket, sys
sys.stdin.read()
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({sock!r})
    s.sendall(b"sync {name}\\n")
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    sys.stdout.write(reply.decode())
except OSError:
    print("routinely: the session's push relay is not answering; your push will be forwarded when the session ends")
"""


class PushError(Exception):
    """A clone or forward failed; the message holds no credential."""


@dataclass
class Relay:
    name: str
    repo: str  # owner/name
    path: Path
    url: str  # the real remote
    forwarded: dict[str, str] = field(default_factory=dict)  # ref -> sha the real remote has from us


def _git(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _refs(path: Path, env: dict[str, str]) -> dict[str, str]:
    out = _git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags"], env, path).stdout
    return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines() if line)}


class PushGuard:
    def __init__(self, root: Path, prefix: str, unrestricted: bool, log: Callable[[str], None]) -> None:
        self.root, self.prefix, self.unrestricted, self.log = root, prefix, unrestricted, log
        self.relays: dict[str, Relay] = {}
        self._auth_env: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        root.mkdir(parents=True, mode=0o700, exist_ok=True)
        # unix socket paths are short-lived and length-limited: keep them in a private tmp dir
        self._sock_dir = tempfile.mkdtemp(prefix="rly-")
        self.sock = os.path.join(self._sock_dir, "s")
        guard = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode().split()
                if len(line) == 2 and line[0] == "sync" and line[1] in guard.relays:
                    self.wfile.write("".join(m + "\n" for m in guard.sync(guard.relays[line[1]])).encode())

        self._server = socketserver.ThreadingUnixStreamServer(self.sock, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def allowed(self, ref: str) -> bool:
        if self.unrestricted:
            return ref.startswith(("refs/heads/", "refs/tags/"))
        return ref.startswith("refs/heads/" + self.prefix)

    def add(self, repo: str, url: str, auth_env: dict[str, str], base_env: dict[str, str]) -> Relay:
        """Mirror `url` into a relay with the guard's hooks. Raises PushError."""
        name = repo.replace("/", "__")
        path = self.root / f"{name}.git"
        env = {**base_env, **auth_env}
        done = _git(["clone", "--bare", "--quiet", url, str(path)], env)
        if done.returncode != 0:
            raise PushError(f"cannot clone {repo}: {_clean(done.stderr)}")
        _git(["config", "receive.denyDeletes", "false"], base_env, path)
        hooks = path / "hooks"
        shutil.rmtree(hooks, ignore_errors=True)
        hooks.mkdir()
        python = sys.executable
        (hooks / "pre-receive").write_text(PRE_RECEIVE.format(python=python, prefix=self.prefix, unrestricted=self.unrestricted))
        (hooks / "post-receive").write_text(POST_RECEIVE.format(python=python, sock=self.sock, name=name))
        for hook in hooks.iterdir():
            hook.chmod(0o700)
        relay = Relay(name=name, repo=repo, path=path, url=url, forwarded=_refs(path, base_env))
        self.relays[name] = relay
        self._auth_env[name] = auth_env
        self._base_env = base_env
        return relay

    def sync(self, relay: Relay) -> list[str]:
        """Forward every allowed ref of the relay that changed; return what happened, line by line."""
        with self._lock:
            env = {**self._base_env, **self._auth_env[relay.name]}
            current = _refs(relay.path, self._base_env)
            messages = []
            for ref in sorted(set(current) | set(relay.forwarded)):
                old, new = relay.forwarded.get(ref), current.get(ref)
                if old == new:
                    continue
                if not self.allowed(ref):
                    messages.append(f"routinely: {ref} was not forwarded to {relay.repo}: outside branch_prefix '{self.prefix}'")
                    continue
                spec = f"+{new}:{ref}" if new else f":{ref}"
                done = _git(["push", "--quiet", "--no-verify", relay.url, spec], env, relay.path)
                if done.returncode == 0:
                    if new:
                        relay.forwarded[ref] = new
                    else:
                        relay.forwarded.pop(ref, None)
                    messages.append(f"routinely: forwarded {ref} to {relay.repo}" + ("" if new else " (deleted)"))
                else:
                    messages.append(f"routinely: forwarding {ref} to {relay.repo} failed: {_clean(done.stderr)}")
            return messages

    def close(self) -> None:
        """Last sync of every relay (hooks may have been deleted), then stop serving."""
        try:
            for relay in self.relays.values():
                for message in self.sync(relay):
                    self.log(message)
        finally:
            self._server.shutdown()
            self._server.server_close()
            shutil.rmtree(self._sock_dir, ignore_errors=True)


def _clean(stderr: str) -> str:
    """git's error, one line, with any credential in a URL masked."""
    import re

    line = " ".join(stderr.strip().splitlines()[-2:]) or "git failed"
    return re.sub(r"://[^@/\s]+@", "://***@", line)
