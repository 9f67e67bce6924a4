"""A session's warm start: its checkouts from the host's mirrors and, when the routine's
setup key matches a cached result, that result mounted as its workspace instead of setup.

    warm = WarmStart(...); warm.prepare(repos)   # mirrors, relays; checkouts or a cached setup
    warm.command()                                # ("setup", script) | ("maintenance", script) | None
    warm.after_setup()                            # cold, cache on, setup exited 0: snapshot it
    warm.close()                                  # unmount, release, measure, evict

The snapshot is the workspace as setup left it (checkouts, HOME, anything else setup wrote
there), minus this session's own files (prompt, event, .mcp.json, TMPDIR). It is made by
renaming the workspace into the cache and mounting it back as the read-only lower layer of an
overlay, so the agent of the session that made it already writes to a layer of its own —
nothing any agent does reaches a snapshot, a mirror or another session.
"""
from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Collection

from routinely.config import Settings
from workers.warm.cache import DEFAULT_TTL_HOURS, Entry, Hold, SetupCache, age
from workers import git
from workers.pushguard import PushGuard
from workers.warm import overlay
from workers.warm.mirror import Mirror, Mirrors
from workers.workspace import SESSION_FILES, Workspace

# lock files whose content decides whether a cached setup still holds (root of each checkout)
DEFAULT_KEY_FILES = (
    "requirements*.txt", "constraints*.txt", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock",
    "pnpm-lock.yaml", "bun.lock", "bun.lockb", "poetry.lock", "uv.lock", "Pipfile.lock", "pdm.lock",
    "go.sum", "Cargo.lock", "Gemfile.lock", "composer.lock", "mix.lock", "pubspec.lock", "Podfile.lock",
    "packages.lock.json", "gradle.lockfile", "flake.lock",
)
KEY_VERSION = 1  # bump when what a snapshot holds changes shape


class WarmStart:
    def __init__(self, settings: Settings, session_id: str, routine_key: str, environment: dict,
                 ws: Workspace, guard: PushGuard, token_for: Callable[[str], Callable[[], str | None]],
                 log: Callable[[str], None], origin: Callable[[str], str],
                 sandboxed: Callable[[list[str], Path], tuple[int, str]]) -> None:
        """`origin(repo)`: the URL a checkout pushes to (the session's push door);
        `sandboxed(argv, cwd)`: runs a command inside the session's sandbox, as the session
        (exit code, output) — how the worker touches checkouts a session wrote."""
        self.settings, self.session_id, self.routine_key, self.environment = settings, session_id, routine_key, environment
        self.ws, self.guard, self.token_for, self.log = ws, guard, token_for, log
        self.origin, self.sandboxed = origin, sandboxed
        self.cache = SetupCache(settings.data_dir)
        self.enabled = environment.get("cache", True) is not False
        self.ttl_hours = environment.get("cache_ttl_hours") or DEFAULT_TTL_HOURS
        self.layers = settings.data_dir / "layers" / session_id
        self.key: str | None = None
        self.hit: Entry | None = None  # the cached setup this session started from
        self.made: Entry | None = None  # the one it made
        self.hold: Hold | None = None
        self.mounted = False
        self.mirrors: dict[str, Mirror] = {}
        self.relay_refs: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []  # what was reused, for the session page
        self.setup_seconds: float | None = None
        self._owner: int | None = None

    # -- before setup
    def prepare(self, repos: list[str]) -> None:
        """Mirrors fetched, relays made; then a cached setup mounted or fresh checkouts.
        Raises PushError (and TokenError from a token callable)."""
        sweep(self.settings.data_dir, self.settings.keep_workspaces)
        for repo in repos:
            mirror = Mirrors(self.settings.data_dir).refresh(repo, self._url(repo), self.token_for(repo))
            self.mirrors[repo] = mirror
            self.log(f"routinely: {mirror.describe()}")
            self.notes.append(mirror.describe())
        for repo in repos:
            relay = self.guard.add(repo, self._url(repo), self.token_for(repo), self.mirrors[repo].path)
            self.relay_refs[repo] = dict(relay.forwarded)
        if self.enabled:
            self.key = self._key(repos)
            entry = self.cache.lookup(self.key, self.ttl_hours, self.settings.clock())
            if entry is not None and self._start_from(entry, repos):
                return
            if entry is None:
                self.log(f"routinely: no cached setup for key {self.key[:8]}…")
        for repo in repos:
            path = self.ws.checkout(repo, self.mirrors[repo].path, self.origin(repo))
            self.log(f"routinely: checked out {repo} at {path.name}")

    def command(self) -> tuple[str, str] | None:
        """What runs before the agent: maintenance on a cached start, else setup (if any)."""
        if self.hit is not None:
            script = self.environment.get("maintenance")
            return ("maintenance", script) if script else None
        script = self.environment.get("setup")
        return ("setup", script) if script else None

    def summary(self) -> str:
        return " · ".join(self.notes)

    # -- after setup
    def after_setup(self, stop_leftovers: Callable[[], None], setup_seconds: float | None = None,
                    withheld: Collection[str] = ()) -> None:
        """Keep what setup (which exited 0, before any agent) left as the key's snapshot; never
        when setup had `withheld` secrets (setup_secrets): whatever it did with one (a config
        file, a file name, an encoded or compressed copy) would reach every later session that
        starts from the snapshot, and no scan finds every form."""
        if not self.enabled or self.hit is not None or self.key is None:
            return
        if withheld:
            self.log(f"routinely: the setup result was not cached: setup had setup_secrets ({', '.join(withheld)})")
            return
        began = time.monotonic()
        self.setup_seconds = setup_seconds
        stop_leftovers()  # a daemon setup started must not write into the snapshot later
        name, hold = self.cache.new_snapshot(self.key)
        snapshot = self.cache.snapshot_path(name)
        reason = overlay.available(self.settings.data_dir / "layers", False)
        try:
            if reason is None:
                self._freeze(snapshot)
            else:
                self._copy_out(snapshot)
        except (OSError, overlay.OverlayError) as exc:
            hold.close()
            self.log(f"routinely: the setup result was not cached: {exc}")
            return
        now = self.settings.clock()
        entry = Entry(
            key=self.key, routine=self.routine_key, snapshot=name, created_at=now, used_at=now,
            owner=list(self.ws.ids) if self.ws.ids else None,
            checkouts={repo: path.name for repo, path in zip(self.mirrors, self.ws.repos)},
            heads={repo: git.read_head(snapshot / path.name)  # the session wrote it: data, never git as root
                   for repo, path in zip(self.mirrors, self.ws.repos)},
            refs=self.relay_refs, setup_seconds=self.setup_seconds, expires_at=now + self.ttl_hours * 3600)
        self.cache.publish(entry)
        self.made, self.hold = entry, hold
        how = "" if reason is None else f" (copied: {reason})"
        self.notes.append(f"setup ran; its result cached as key {entry.short}")
        self.log(f"routinely: setup result cached as key {entry.short} in {time.monotonic() - began:.2f} s{how}")

    def _freeze(self, snapshot: Path) -> None:
        """Rename the workspace into the cache and mount it back under a layer of its own."""
        upper, work = self._layers()
        root = self.ws.root
        for name in SESSION_FILES:
            if os.path.lexists(root / name):
                os.rename(root / name, upper / name)
        os.rename(root, snapshot)
        try:
            root.mkdir(mode=0o700)
            overlay.mount(snapshot, upper, work, root)
        except (OSError, overlay.OverlayError):
            shutil.rmtree(root, ignore_errors=True)
            os.rename(snapshot, root)
            for name in SESSION_FILES:
                if os.path.lexists(upper / name):
                    os.rename(upper / name, root / name)
            raise
        self.mounted = True

    def _copy_out(self, snapshot: Path) -> None:
        tmp = snapshot.with_name(snapshot.name + ".part")
        tmp.mkdir(mode=0o700)
        names = [n for n in os.listdir(self.ws.root) if n not in SESSION_FILES]
        if names:
            _cp([str(self.ws.root / n) for n in names], tmp)
        os.rename(tmp, snapshot)

    # -- a cached start
    def _start_from(self, entry: Entry, repos: list[str]) -> bool:
        """Mount (or copy) `entry` as the workspace and bring its checkouts to the current
        heads; False (nothing left behind) when it cannot, and the session starts cold."""
        began = time.monotonic()
        hold = self.cache.use(entry, self.settings.clock())
        if hold is None:
            return False
        ids = self.ws.ids
        owner = tuple(entry.owner) if entry.owner else None
        remap = owner is not None and ids is not None and owner != ids
        reason = overlay.available(self.settings.data_dir / "layers", remap)
        try:
            if reason is None:
                self._mount(self.cache.snapshot_path(entry), owner if remap else None)
            else:
                self.log(f"routinely: overlay mounts are unavailable here ({reason}); copying the cached setup instead")
                _cp([str(p) for p in self.cache.snapshot_path(entry).iterdir()], self.ws.root)
                if ids:
                    git.chown_tree(self.ws.root, ids)
            self.ws.repos = [self.ws.root / entry.checkouts[repo] for repo in repos]
            moved = self._catch_up(entry, repos)
        except (OSError, overlay.OverlayError, _Stale) as exc:
            self.log(f"routinely: the cached setup (key {entry.short}) cannot be used: {exc}; running setup")
            self._undo()
            hold.close()
            return False
        self.hit, self.hold = entry, hold
        note = f"setup cached (key {entry.short}, {age(self.settings.clock() - entry.created_at)} old)"
        self.notes.append(note)
        self.log(f"routinely: {note}, workspace in {time.monotonic() - began:.2f} s" + (f"; {moved}" if moved else ""))
        return True

    def _mount(self, snapshot: Path, remap_from: tuple[int, int] | None) -> None:
        upper, work = self._layers()
        for name in (".routinely", ".tmp"):
            (upper / name).mkdir(mode=0o700)
            if self.ws.ids:
                os.chown(upper / name, *self.ws.ids)
        lower = snapshot
        if remap_from is not None:
            lower = self.layers / "lower"
            lower.mkdir(mode=0o700)
            overlay.idmapped_view(snapshot, lower, remap_from, self.ws.ids)
        try:
            overlay.mount(lower, upper, work, self.ws.root)
        finally:
            if remap_from is not None:
                overlay.unmount(lower)  # the overlay keeps its own reference to the layer
        self.mounted = True

    def _catch_up(self, entry: Entry, repos: list[str]) -> str:
        """Point each checkout at this session's push door and move it to the default
        branch's current head (only the delta is fetched and written) — inside the sandbox,
        as the session: an earlier session wrote these checkouts (their config, hooks,
        attributes), so no git of the worker's runs in them. Raises _Stale."""
        moved = []
        for repo, path in zip(repos, self.ws.repos):
            steps = [["git", "remote", "set-url", "origin", self.origin(repo)]]
            if entry.refs.get(repo) != self.relay_refs[repo]:
                steps.append(["git", "fetch", "--quiet", "--prune", "--no-write-fetch-head", "origin"])
            head = self.mirrors[repo].head
            if entry.heads.get(repo) != head:
                steps.append(["git", "reset", "--quiet", "--keep", head])
                moved.append(f"{repo} moved {entry.heads.get(repo, '')[:7]}→{head[:7]}")
            for step in steps:
                code, output = self.sandboxed(step, path)
                if code != 0:
                    raise _Stale(f"git {step[1]} in {path.name}: {git.clean_error(output)}")
        return ", ".join(moved)

    def _layers(self) -> tuple[Path, Path]:
        self.layers.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.layers.parent, 0o700)
        # held while this worker lives: a sweep after a crash knows the mount is nobody's
        if self._owner is None:
            self._owner = os.open(self.layers.with_name(self.layers.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._owner, fcntl.LOCK_EX)
        self.layers.mkdir(mode=0o700)
        upper, work = self.layers / "upper", self.layers / "work"
        upper.mkdir(mode=0o700)
        work.mkdir(mode=0o700)
        if self.ws.ids:
            os.chown(upper, *self.ws.ids)
        return upper, work

    def _undo(self) -> None:
        """Back to an empty workspace (as Workspace.create left it), for a cold start."""
        if self.mounted:
            overlay.unmount(self.ws.root)
            self.mounted = False
        shutil.rmtree(self.layers, ignore_errors=True)
        for child in self.ws.root.iterdir():
            if child.name not in (".routinely", ".tmp"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        self.ws.home.mkdir(mode=0o700)
        if self.ws.ids:
            os.chown(self.ws.home, *self.ws.ids)
        self.ws.repos = []

    # -- after the session
    def close(self) -> None:
        """Unmount (keeping a copy with ROUTINELY_KEEP_WORKSPACES), release the snapshot,
        measure the one this session made and evict past ROUTINELY_CACHE_MAX_GB."""
        try:
            if self.mounted:
                root = self.ws.root
                if self.settings.keep_workspaces:
                    kept = root.with_name(root.name + ".kept")
                    kept.mkdir(mode=0o700)
                    _cp([str(p) for p in root.iterdir()], kept)
                    overlay.unmount(root)
                    shutil.rmtree(root)  # what Workspace.create made, hidden under the mount
                    os.rename(kept, root)
                    os.chmod(root, 0o700)
                    if self.ws.ids:
                        os.chown(root, *self.ws.ids)
                else:
                    overlay.unmount(root)
                self.mounted = False
            shutil.rmtree(self.layers, ignore_errors=True)
            if self._owner is not None:
                self.layers.with_name(self.layers.name + ".lock").unlink(missing_ok=True)
                os.close(self._owner)
                self._owner = None
        finally:
            if self.hold is not None:
                self.hold.close()
                self.hold = None
            if self.made is not None:
                self.cache.record_size(self.made)
            if self.enabled:
                self.cache.evict(self.settings.cache_max_gb * 1024 ** 3, self.settings.clock())

    # -- the key
    def _key(self, repos: list[str]) -> str:
        """The setup script, the routine's environment, the session-user mode and, for each
        repository, its default branch and the blobs of its key files at the current head."""
        env = self.environment
        parts = {
            "v": KEY_VERSION,
            "routine": self.routine_key,
            "users": bool(self.ws.ids),
            "environment": {k: env.get(k) for k in ("setup", "env", "network", "allow_hosts", "limits")},
            "repos": [[repo, self.mirrors[repo].branch, self._key_files(self.mirrors[repo])] for repo in repos],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _key_files(self, mirror: Mirror) -> dict[str, str]:
        wanted = self.environment.get("cache_key_files")
        args = ["ls-tree", "HEAD", "--", *wanted] if wanted else ["ls-tree", "HEAD"]
        out = git.run(args, git.worker_env(), mirror.path).stdout if mirror.head else ""
        blobs = {}
        for line in out.splitlines():
            meta, _, path = line.partition("\t")
            if wanted or any(fnmatch.fnmatchcase(path, pattern) for pattern in DEFAULT_KEY_FILES):
                blobs[path] = meta.split()[2]
        return blobs

    def _url(self, repo: str) -> str:
        return f"{self.settings.github_git_url}/{repo}.git"


def sweep(data_dir: Path, keep_workspaces: bool = False) -> list[str]:
    """Unmount and remove what sessions of a worker that died left mounted on this host
    (their layer's lock is free); returns their session ids."""
    layers = data_dir / "layers"
    try:
        names = [n[:-5] for n in os.listdir(layers) if n.endswith(".lock")]
    except FileNotFoundError:
        return []
    swept = []
    for sid in names:
        lock = layers / f"{sid}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its worker is alive
            for mounted in (layers / sid / "lower", data_dir / "workspaces" / sid):
                if overlay.is_mount(mounted):
                    overlay.unmount(mounted)
            shutil.rmtree(layers / sid, ignore_errors=True)
            if not keep_workspaces:
                shutil.rmtree(data_dir / "workspaces" / sid, ignore_errors=True)
            lock.unlink(missing_ok=True)
            swept.append(sid)
        finally:
            os.close(fd)
    return swept


class _Stale(Exception):
    """A cached checkout cannot be brought to the current head; the session starts cold."""


def _cp(sources: list[str], target: Path) -> None:
    done = subprocess.run(["cp", "-a", "--reflink=auto", *sources, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"cp failed: {done.stderr.strip()}")

