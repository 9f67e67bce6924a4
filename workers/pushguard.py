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
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workers import git

# plain sh: it runs as the session's user, who may not be able to run the worker's Python
PRE_RECEIVE = """#!/bin/sh
status=0
while read old new ref; do
  if [ {unrestricted} = 1 ]; then
    case "$ref" in refs/heads/*|refs/tags/*) continue ;; esac
  else
    case "$ref" in "refs/heads/{prefix}"*) continue ;; esac
  fi
  echo "routinely: push to $ref refused: this routine may push only to branches under '{prefix}' (its branch_prefix)"
  status=1
done
exit $status
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
    pushed: set[str] = field(default_factory=set)  # refs this session forwarded (and did not delete since)


def _refs(path: Path, env: dict[str, str]) -> dict[str, str]:
    out = git.run(["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags"], env, path).stdout
    return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines() if line)}


class PushGuard:
    def __init__(self, root: Path, prefix: str, unrestricted: bool, log: Callable[[str], None],
                 ids: git.Ids | None = None, sock: str | None = None,
                 on_forward: Callable[[str, str], None] | None = None) -> None:
        """`sock`: where to serve the hooks' socket (the session's door folder, which its
        sandbox can see); by default a short tmp dir of its own."""
        self.root, self.prefix, self.unrestricted, self.log, self.ids = root, prefix, unrestricted, log, ids
        self.on_forward = on_forward  # (repo, ref) after a ref reached the real remote: routinely.chain
        self.relays: dict[str, Relay] = {}
        self._tokens: dict[str, Callable[[], str | None]] = {}
        self._lock = threading.Lock()
        root.mkdir(parents=True, mode=0o700, exist_ok=True)
        if ids:
            os.chown(root, *ids)
        # unix socket paths are length-limited: keep the socket in a short tmp dir that the
        # session's user may traverse (the hook connects to it; it can only ask for a sync)
        self._sock_dir = None if sock else tempfile.mkdtemp(prefix="rly-")
        if self._sock_dir:
            os.chmod(self._sock_dir, 0o711)
        self.sock = sock or os.path.join(self._sock_dir, "s")
        guard = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode().split()
                if len(line) == 2 and line[0] == "sync" and line[1] in guard.relays:
                    self.wfile.write("".join(m + "\n" for m in guard.sync(guard.relays[line[1]])).encode())

        self._server = socketserver.ThreadingUnixStreamServer(self.sock, Handler)
        os.chmod(self.sock, 0o666)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def allowed(self, ref: str) -> bool:
        if self.unrestricted:
            return ref.startswith(("refs/heads/", "refs/tags/"))
        return ref.startswith("refs/heads/" + self.prefix)

    def add(self, repo: str, url: str, token: Callable[[], str | None], source: Path | None = None) -> Relay:
        """A relay of `url` with the guard's hooks, cloned from the host's mirror `source`
        (its object files hard-linked, read-only) or else from `url`. `token` is asked each
        time the remote is used (installation tokens expire within the hour). Raises PushError."""
        name = repo.replace("/", "__")
        path = self.root / f"{name}.git"
        origin = str(source) if source else url
        done = git.run(["clone", "--bare", "--quiet", origin, str(path)], git.worker_env(None if source else token()))
        if done.returncode != 0:
            raise PushError(f"cannot clone {repo}: {git.clean_error(done.stderr)}")
        env = git.worker_env()
        git.run(["config", "receive.denyDeletes", "false"], env, path)
        hooks = path / "hooks"
        shutil.rmtree(hooks, ignore_errors=True)
        hooks.mkdir()
        python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
        (hooks / "pre-receive").write_text(PRE_RECEIVE.format(prefix=self.prefix, unrestricted=int(self.unrestricted)))
        (hooks / "post-receive").write_text(POST_RECEIVE.format(python=python, sock=self.sock, name=name))
        for hook in hooks.iterdir():
            hook.chmod(0o755)
        if self.ids:
            git.chown_tree(path, self.ids)  # the session's user pushes into it
        relay = Relay(name=name, repo=repo, path=path, url=url, forwarded=_refs(path, env))
        self.relays[name] = relay
        self._tokens[name] = token
        return relay

    def sync(self, relay: Relay) -> list[str]:
        """Forward every allowed ref of the relay that changed; return what happened, line by line."""
        with self._lock:
            current = _refs(relay.path, git.worker_env())
            messages = []
            for ref in sorted(set(current) | set(relay.forwarded)):
                old, new = relay.forwarded.get(ref), current.get(ref)
                if old == new:
                    continue
                if not self.allowed(ref):
                    messages.append(f"routinely: {ref} was not forwarded to {relay.repo}: outside branch_prefix '{self.prefix}'")
                    continue
                try:
                    env = git.worker_env(self._tokens[relay.name]())
                except Exception as exc:  # TokenError: say why, forward nothing
                    messages.append(f"routinely: forwarding {ref} to {relay.repo} failed: {exc}")
                    continue
                spec = f"+{new}:{ref}" if new else f":{ref}"
                done = git.run(["push", "--quiet", "--no-verify", relay.url, spec], env, relay.path)
                if done.returncode == 0:
                    if new:
                        relay.forwarded[ref] = new
                        relay.pushed.add(ref)
                        if self.on_forward is not None:
                            self.on_forward(relay.repo, ref)
                    else:
                        relay.forwarded.pop(ref, None)
                        relay.pushed.discard(ref)
                    messages.append(f"routinely: forwarded {ref} to {relay.repo}" + ("" if new else " (deleted)"))
                else:
                    messages.append(f"routinely: forwarding {ref} to {relay.repo} failed: {git.clean_error(done.stderr)}")
            return messages

    def pushed_branch(self, repo: str, branch: str) -> bool:
        """Did this session push `branch` of `repo` through the guard to the real remote?
        Syncs the relay first, so a push whose hook was skipped still counts once forwarded."""
        relay = next((r for r in self.relays.values() if r.repo.lower() == repo.lower()), None)
        if relay is None:
            return False
        ref = f"refs/heads/{branch}"
        if ref not in relay.pushed:
            for message in self.sync(relay):
                self.log(message)
        return ref in relay.pushed

    def close(self) -> None:
        """Last sync of every relay (hooks may have been deleted), then stop serving."""
        try:
            for relay in self.relays.values():
                for message in self.sync(relay):
                    self.log(message)
        finally:
            self._server.shutdown()
            self._server.server_close()
            if self._sock_dir:
                shutil.rmtree(self._sock_dir, ignore_errors=True)
