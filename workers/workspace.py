"""A session's workspace: a fresh private directory, the routine's repositories checked out
from the host's mirrors at the default branch (origin: the session's push door), .mcp.json
and the prompt files — or, on a warm start, a cached setup result mounted there
(workers.warm).

With a session user, the workspace belongs to that user and the folders above it can be
traversed but not listed, so a session finds nothing of another's or of the worker's.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workers import git, session_files
from workers.pushguard import PushError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


SESSION_FILES = (".routinely", ".tmp", ".mcp.json")  # this session's alone: never in a snapshot


@dataclass
class Workspace:
    root: Path
    relays: Path
    ids: git.Ids | None = None
    repos: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, data_dir: Path, session_id: str, ids: git.Ids | None = None) -> "Workspace":
        """Raises PermissionError when a session user could not reach the workspace."""
        shared = 0o711 if ids else 0o700  # traverse-only for session users: nothing to list
        if ids:
            for parent in data_dir.resolve().parents:
                if parent.exists() and not parent.stat().st_mode & 0o001:
                    raise PermissionError(
                        f"ROUTINELY_DATA_DIR {data_dir} is inside {parent}, which session users cannot enter: "
                        "set ROUTINELY_DATA_DIR to a folder such as /var/lib/routinely, or ROUTINELY_SESSION_USERS=off")
        for folder, mode in ((data_dir, shared), (data_dir / "workspaces", shared), (data_dir / "relays", 0o700)):
            folder.mkdir(parents=True, exist_ok=True, mode=mode)
            os.chmod(folder, mode)  # relays: the worker's alone (sessions reach them through their push door)
        root = data_dir / "workspaces" / session_id
        root.mkdir(mode=0o700)
        for sub in (".routinely", ".tmp", ".home"):
            (root / sub).mkdir(mode=0o700)
        ws = cls(root=root, relays=data_dir / "relays" / session_id, ids=ids)
        if ids:
            git.chown_tree(root, ids)
        return ws

    @property
    def home(self) -> Path:
        return self.root / ".home"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.relays, ignore_errors=True)

    def write(self, relative: str, data: str | bytes, mode: int = 0o600) -> Path:
        """A file the agent reads, owned by the session's user when there is one; missing
        folders on the way are made. Written as data (workers.session_files): on a warm start
        the folders below the root are what an earlier session left."""
        session_files.write(self.root, relative, data.encode() if isinstance(data, str) else data, mode, self.ids)
        return self.root / relative

    def target_for(self, repo: str) -> Path:
        target = self.root / repo.split("/")[1]
        if target.exists():  # two repositories with one name, from different owners
            target = self.root / repo.replace("/", "-")
        return target

    def checkout(self, repo: str, mirror: Path, origin: str) -> Path:
        """Check `repo` out from the host's `mirror` at its default branch, with `origin`
        set to `origin` (the session's push door). The worker clones (object files hard-linked
        from the mirror, root-owned and read-only) and gives the rest to the session's user,
        after which it runs no git there. Raises PushError."""
        target = self.target_for(repo)
        env = {**git.worker_env(), "HOME": str(self.home)}
        settings = ["user.name=routinely[bot]", "user.email=routinely@localhost", "push.default=current"]
        done = git.run(["clone", "--quiet", *(f"--config={s}" for s in settings), str(mirror), str(target)], env)
        if done.returncode != 0:
            raise PushError(f"cannot check out {repo}: {git.clean_error(done.stderr)}")
        git.run(["remote", "set-url", "origin", origin], env, target)
        if self.ids:
            git.chown_tree(target, self.ids)
        self.repos.append(target)
        return target

    def write_mcp(self, connectors: Mapping[str, Any], wanted: list[str] | None, environ: Mapping[str, str],
                  builtin: Mapping[str, Any] | None = None) -> Path:
        """.mcp.json with the routine's connectors (all when it names none), ${VAR} expanded
        from the service's environment at session start (unset variables become ""), and the
        built-in ones (`github`) beside them, as given."""
        chosen = {name: connectors[name] for name in (wanted if wanted is not None else connectors)}
        expanded = json.loads(_VAR.sub(lambda m: json.dumps(environ.get(m.group(1), ""))[1:-1], json.dumps(chosen)))
        expanded.update(builtin or {})
        return self.write(".mcp.json", json.dumps({"mcpServers": expanded}, indent=2) + "\n")
