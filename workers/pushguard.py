"""The push door: a session's `origin` is served by the worker over git's own protocol, from a
relay repository the worker owns and the session cannot see.

The session's checkouts point `origin` at `git://127.0.0.1:PORT/OWNER/REPO.git`, a door like
the gateway's (a unix socket in the session's door folder, bridged inside the sandbox). For
each connection the worker reads one request line (bounded, timed), then runs
`git receive-pack` (push) or `git upload-pack` (fetch) on the relay with the socket as its
input and output — in the session's cgroup, so what a push costs (memory, pids) is the
session's — and with a git environment the worker fixes: no system or global config, the
relay's config written by the worker alone, hooks from a folder of the worker's, objects
checked (`receive.fsckObjects`), the pack size capped. The pre-receive hook refuses refs
outside `branch_prefix` (and tags unless `allow_tag_pushes`) at push time, with a line the
agent sees; then it hands the updates to the worker, which reads what the push adds and
refuses a ref whose commits carry a secret of the session or a token of a known shape
(workers/pushscan.py), naming the file and line. The post-receive hook asks the worker to
forward.

Forwarding runs from the relay with a fixed environment too (only the remote's protocol
allowed, a credential the agent never sees), and a last sync when the session ends. Nothing
the session sends reaches the host's mirror: relays are per session and are cloned from it,
never fetched into it.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from workers import git
from workers.pushscan import ZERO, Scanner, ScanRefused, refusal
from workers.process import child_setup  # before exec: the session's cgroup, then the uid

MAX_CONNECTIONS = 4  # a session's git connections at once; one push or fetch needs one
REQUEST_MAX = 1024  # git's request line: "git-receive-pack /owner/repo.git\0host=…\0"
REQUEST_SECONDS = 10  # to send it
SERVICE_SECONDS = 600  # one push or fetch, end to end
DEFAULT_MAX_INPUT = 1024 * 1024 * 1024  # receive.maxInputSize when the session has no disk limit

# plain sh, run by receive-pack as the worker: every value comes from the environment the
# worker sets, and the ref names git hands it (git refuses control characters and spaces in them)
PRE_RECEIVE = """#!/bin/sh
status=0
updates=""
while read old new ref; do
  updates="$updates$old $new $ref
"
  case "$ref" in
    refs/heads/*)
      [ "$ROUTINELY_UNRESTRICTED" = 1 ] && continue
      case "$ref" in "refs/heads/$ROUTINELY_PREFIX"*) continue ;; esac
      echo "routinely: push to $ref refused: this routine may push only to branches under '$ROUTINELY_PREFIX' (its branch_prefix)" ;;
    refs/tags/*)
      [ "$ROUTINELY_TAGS" = 1 ] && continue
      echo "routinely: push to $ref refused: this routine may not push tags (allow_tag_pushes is false)" ;;
    *)
      echo "routinely: push to $ref refused: only branches (and tags, with allow_tag_pushes) can be pushed" ;;
  esac
  status=1
done
[ $status = 0 ] || exit $status
printf '%s' "$updates" | "$ROUTINELY_PYTHON" -IS "$ROUTINELY_HOOKS/scan"
"""

# the worker reads what the push adds (workers/pushscan.py); no answer refuses the push
SCAN = """import os, socket, sys
updates = sys.stdin.read()
s = socket.socket(socket.AF_UNIX)
try:
    s.settimeout(300)
    s.connect(os.environ["ROUTINELY_SYNC_SOCKET"])
    s.sendall(("scan " + os.environ["ROUTINELY_RELAY"] + " " + os.environ.get("GIT_QUARANTINE_PATH", "-") + "\\n"
               + updates + "\\n").encode())
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
except OSError:
    print("routinely: the push door could not read this push for secrets; it is refused, push again")
    sys.exit(1)
verdict, _, lines = reply.decode(errors="replace").partition("\\n")
sys.stdout.write(lines)
sys.exit(0 if verdict == "ok" else 1)
"""
SCAN_UPDATES_MAX = 1000  # ref updates in one push the worker reads
_OBJECT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

POST_RECEIVE = """#!{python} -IS
import os, socket, sys
sys.stdin.read()
s = socket.socket(socket.AF_UNIX)
try:
    s.settimeout(300)
    s.connect(os.environ["ROUTINELY_SYNC_SOCKET"])
    s.sendall(("sync " + os.environ["ROUTINELY_RELAY"] + "\\n").encode())
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
    name: str  # owner__repo
    repo: str  # owner/name
    path: Path
    url: str  # the real remote
    forwarded: dict[str, str] = field(default_factory=dict)  # ref -> sha the real remote has from us
    pushed: set[str] = field(default_factory=set)  # refs this session forwarded (and did not delete since)


def _refs(path: Path, env: dict[str, str]) -> dict[str, str]:
    out = git.run(["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags"], env, path).stdout
    return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines() if line)}


def read_request(conn: socket.socket) -> tuple[str, str, str]:
    """git's daemon request, `(service, path, protocol)`; raises ValueError for anything else.

    One pkt-line: four hex digits of length, `git-upload-pack PATH\\0host=H\\0`, optionally
    `\\0version=N\\0` (git's protocol v2 asks so)."""
    conn.settimeout(REQUEST_SECONDS)
    head = _read_exactly(conn, 4)
    try:
        size = int(head, 16)
    except ValueError:
        raise ValueError("not a git request") from None
    if not 4 < size <= REQUEST_MAX:
        raise ValueError("request line too long")
    body = _read_exactly(conn, size - 4)
    command, _, rest = body.partition(b"\0")
    service, _, path = command.decode("ascii", "replace").partition(" ")
    if service not in ("git-receive-pack", "git-upload-pack"):
        raise ValueError(f"service {service[:40]!r} is not offered")
    extra = [p for p in rest.split(b"\0") if p]
    protocol = next((p.decode() for p in extra if p in (b"version=1", b"version=2")), "")
    return service, path, protocol


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ValueError("the request ended early")
        data += chunk
    return data


def _pkt(text: str) -> bytes:
    data = text.encode()
    return b"%04x" % (len(data) + 4) + data


LINGER_BYTES = 256 * 1024
LINGER_SECONDS = 2.0


def _answer(conn: socket.socket, text: str, linger: float = LINGER_SECONDS) -> None:
    """Send git's `ERR` line and half-close, then read (and drop) what the peer is still sending.

    Closing a socket with unread input sends a reset, and a reset makes the peer's kernel drop
    the ERR line before the client reads it: the client would see a bare disconnect. The
    drain is bounded in bytes and time, so a peer that keeps sending costs at most that;
    `linger=0` drops only what has already arrived (for the accepting thread, which must not wait)."""
    try:
        conn.sendall(_pkt(text))
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(linger if linger > 0 else 0.0)  # 0.0: non-blocking, BlockingIOError ends the drain
        drained = 0
        while drained < LINGER_BYTES:
            chunk = conn.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass


class PushGuard:
    """One session's push door and its relays."""

    def __init__(self, root: Path, prefix: str, unrestricted: bool, log: Callable[[str], None], sock: str,
                 allow_tags: bool = False, join: tuple[str, ...] = (), rlimits: tuple[tuple[int, int], ...] = (),
                 max_input_bytes: int | None = None, on_forward: Callable[[str, str], None] | None = None,
                 secrets: Mapping[str, str] | None = None) -> None:
        """`root`: a folder for the relays that only the worker can enter; `sock`: where to
        serve the door (the session's door folder); `join`/`rlimits`: the session's cgroup
        (its procs files) or its rlimits, which every git process of the door takes on;
        `secrets`: name -> value of what the session could see, refused in what it pushes
        (the runner may add to `self.secrets` later: the session's tokens)."""
        self.root, self.prefix, self.unrestricted, self.allow_tags, self.log = root, prefix, unrestricted, allow_tags, log
        self.join, self.rlimits = join, rlimits
        self.max_input_bytes = max_input_bytes or DEFAULT_MAX_INPUT
        self.on_forward = on_forward  # (repo, ref) after a ref reached the real remote: routinely.firing.chain
        self.relays: dict[str, Relay] = {}
        self.secrets: dict[str, str] = dict(secrets or {})
        self._tokens: dict[str, Callable[[], str | None]] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._refusing = False  # one log line per burst of refused connections
        self._children: set[subprocess.Popen] = set()
        self._closed = False
        root.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        self._hooks = root / ".hooks"
        self._hooks.mkdir(mode=0o700, exist_ok=True)
        python = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
        self._python = python
        (self._hooks / "pre-receive").write_text(PRE_RECEIVE)
        (self._hooks / "scan").write_text(SCAN)
        (self._hooks / "post-receive").write_text(POST_RECEIVE.format(python=python))
        for hook in self._hooks.iterdir():
            hook.chmod(0o700)
        self._home = root / ".home"  # git's HOME: empty, the worker's
        self._home.mkdir(mode=0o700, exist_ok=True)
        # the hooks call back here; a short folder of the worker's alone (socket paths are
        # limited to 107 bytes)
        self._sync_dir = tempfile.mkdtemp(prefix="rly-sync-")
        self._sync_sock = os.path.join(self._sync_dir, "s")
        guard = self

        class SyncHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                raw = self.rfile.readline(4096).decode(errors="replace").rstrip("\n")
                line = raw.split(" ", 2)  # scan RELAY QUARANTINE: the last may hold a space (the data dir's)
                if len(line) == 2 and line[0] == "sync" and line[1] in guard.relays:
                    self.wfile.write("".join(m + "\n" for m in guard.sync(guard.relays[line[1]])).encode())
                elif len(line) == 3 and line[0] == "scan" and line[1] in guard.relays:
                    updates = []
                    while len(updates) <= SCAN_UPDATES_MAX and (entry := self.rfile.readline(512).split()):
                        updates.append(tuple(part.decode(errors="replace") for part in entry))
                    verdict = guard.scan(guard.relays[line[1]], line[2], updates)
                    self.wfile.write(("ok\n" if not verdict else "refused\n" + "".join(m + "\n" for m in verdict)).encode())

        self._sync = socketserver.ThreadingUnixStreamServer(self._sync_sock, SyncHandler)
        self._sync.daemon_threads = True
        threading.Thread(target=self._sync.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.sock = sock
        self._door = socket.socket(socket.AF_UNIX)
        self._door.bind(sock)
        self._door.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    # -- relays
    def allowed(self, ref: str) -> bool:
        """The rule the pre-receive hook applies, for forwarding."""
        if ref.startswith("refs/tags/"):
            return self.allow_tags
        if self.unrestricted:
            return ref.startswith("refs/heads/")
        return ref.startswith("refs/heads/" + self.prefix)

    def add(self, repo: str, url: str, token: Callable[[], str | None], source: Path | None = None) -> Relay:
        """A relay of `url`, cloned from the host's mirror `source` (its object files
        hard-linked, never written) or else from `url`. `token` is asked each time the remote
        is used (installation tokens expire within the hour). Raises PushError."""
        name = repo.replace("/", "__")
        path = self.root / f"{name}.git"
        origin = str(source) if source else url
        done = git.run(["clone", "--bare", "--quiet", origin, str(path)],
                       git.worker_env(None if source else token(), remote=None if source else url))
        if done.returncode != 0:
            raise PushError(f"cannot clone {repo}: {git.clean_error(done.stderr)}")
        config = path / "config"
        config.write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")  # the worker's alone
        relay = Relay(name=name, repo=repo, path=path, url=url, forwarded=_refs(path, git.worker_env()))
        self.relays[name] = relay
        self._tokens[name] = token
        return relay

    def url(self, repo: str, port: int) -> str:
        """What a checkout's `origin` is, inside the session."""
        return f"git://127.0.0.1:{port}/{repo}.git"

    # -- the door
    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._door.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            self._refusing = False
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        if not self._refusing:
            self._refusing = True
            self.log(f"routinely: push door: more than {MAX_CONNECTIONS} git connections at once; refusing the rest")
        _answer(conn, f"ERR routinely: more than {MAX_CONNECTIONS} git connections at once\n", linger=0)
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                service, path, protocol = read_request(conn)
            except (ValueError, OSError) as exc:
                _answer(conn, f"ERR routinely: {exc}\n")
                return
            relay = self.relays.get(path.strip("/").removesuffix(".git").replace("/", "__"))
            if relay is None:
                _answer(conn, f"ERR routinely: no repository {path[:100]!r} here: push to origin\n")
                return
            conn.settimeout(None)
            self._run(service, relay, protocol, conn)
        except OSError:
            pass
        finally:
            conn.close()
            self._slots.release()

    def _run(self, service: str, relay: Relay, protocol: str, conn: socket.socket) -> None:
        """receive-pack or upload-pack on the relay, talking straight to the session's socket."""
        argv = ["git", service.removeprefix("git-")]
        if service == "git-upload-pack":
            argv += ["--strict", f"--timeout={SERVICE_SECONDS}"]
            env = self._env(relay)
            if protocol:
                env["GIT_PROTOCOL"] = protocol
        else:
            env = self._env(relay)
        argv.append(str(relay.path))
        with self._lock:
            if self._closed:
                return
            proc = subprocess.Popen(argv, stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.DEVNULL,
                                    env=env, cwd=relay.path, start_new_session=True,
                                    preexec_fn=child_setup(None, self.join, self.rlimits))
            self._children.add(proc)
        try:
            proc.wait(SERVICE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            with self._lock:
                self._children.discard(proc)

    def _env(self, relay: Relay) -> dict[str, str]:
        """git's whole environment for the door: nothing from the host's or the session's config."""
        pairs = [("core.hooksPath", str(self._hooks)), ("receive.fsckObjects", "true"),
                 ("transfer.fsckObjects", "true"), ("receive.maxInputSize", str(self.max_input_bytes)),
                 ("receive.denyDeletes", "false"), ("receive.denyNonFastForwards", "false"),
                 ("receive.advertisePushOptions", "false"), ("receive.autogc", "false"), ("gc.auto", "0"),
                 ("uploadpack.allowFilter", "false"), ("core.fsmonitor", "false")]
        return {**git.base_env(home=str(self._home)), "GIT_CONFIG_GLOBAL": os.devnull, **git.config_env(pairs),
                "ROUTINELY_PYTHON": self._python, "ROUTINELY_HOOKS": str(self._hooks),
                "ROUTINELY_PREFIX": self.prefix, "ROUTINELY_UNRESTRICTED": str(int(self.unrestricted)),
                "ROUTINELY_TAGS": str(int(self.allow_tags)), "ROUTINELY_SYNC_SOCKET": self._sync_sock,
                "ROUTINELY_RELAY": relay.name}

    # -- reading a push
    def scan(self, relay: Relay, quarantine: str, updates: list[tuple[str, ...]]) -> list[str]:
        """The lines refusing this push (none: it may land), for the pre-receive hook. `quarantine`:
        where receive-pack holds the pushed objects, inside the relay (anything else refuses)."""
        if len(updates) > SCAN_UPDATES_MAX:
            return [f"routinely: push refused: at most {SCAN_UPDATES_MAX} refs a push"]
        if any(len(u) != 3 or not all(_OBJECT.fullmatch(sha) for sha in u[:2]) for u in updates):
            return ["routinely: push refused: the push door could not read its ref updates"]
        env = git.worker_env()
        objects = (relay.path / "objects").resolve()
        if quarantine != "-":
            held = Path(quarantine).resolve()
            if held.parent != objects or not held.name.startswith("tmp_objdir-incoming-") or not held.is_dir():
                return ["routinely: push refused: the push door could not find what it holds"]
            env.update(GIT_OBJECT_DIRECTORY=str(held), GIT_ALTERNATE_OBJECT_DIRECTORIES=str(objects))
        scanner = Scanner(self.secrets)
        lines = []
        for old, new, ref in updates:
            if new == ZERO:
                continue
            try:
                findings = scanner.push(relay.path, env, [(old, new, ref)])
            except ScanRefused as exc:
                lines.append(f"routinely: push to {ref} refused: {exc}")
                continue
            if findings:
                lines.append(refusal(ref, findings))
        for line in lines:
            self.log(line)
        return lines

    # -- forwarding
    def sync(self, relay: Relay) -> list[str]:
        """Forward every allowed ref of the relay that changed; return what happened, line by line."""
        with self._lock:
            current = _refs(relay.path, git.worker_env())
            messages = []
            for ref in sorted(set(current) | set(relay.forwarded)):
                old, new = relay.forwarded.get(ref), current.get(ref)
                if old == new:
                    continue
                if not self.allowed(ref):  # only what was there before the session: the hook lets nothing else in
                    continue
                try:
                    env = git.worker_env(self._tokens[relay.name](), remote=relay.url)
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
        """Did this session push `branch` of `repo` through the door to the real remote?
        Syncs the relay first, so a push whose forward failed once is tried again."""
        relay = next((r for r in self.relays.values() if r.repo.lower() == repo.lower()), None)
        if relay is None:
            return False
        ref = f"refs/heads/{branch}"
        if ref not in relay.pushed:
            for message in self.sync(relay):
                self.log(message)
        return ref in relay.pushed

    def close(self) -> None:
        """Stop serving, end the door's git processes, then a last sync of every relay."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        try:
            self._door.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, which then ends
        except OSError:
            pass
        self._door.close()
        for proc in children:
            proc.kill()
            proc.wait()
        try:
            for relay in self.relays.values():
                for message in self.sync(relay):
                    self.log(message)
        finally:
            self._sync.shutdown()
            self._sync.server_close()
            shutil.rmtree(self._sync_dir, ignore_errors=True)

