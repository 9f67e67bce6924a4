"""A session's workspace: a fresh private directory, the routine's repositories checked out
from their push-guard relays at the default branch, .mcp.json and the prompt files."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workers.pushguard import PushError, PushGuard, _git

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Workspace:
    root: Path
    relays: Path
    repos: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, data_dir: Path, session_id: str) -> "Workspace":
        for folder in (data_dir, data_dir / "workspaces", data_dir / "relays"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        root = data_dir / "workspaces" / session_id
        root.mkdir(mode=0o700)
        (root / ".routinely").mkdir(mode=0o700)
        (root / ".tmp").mkdir(mode=0o700)
        return cls(root=root, relays=data_dir / "relays" / session_id)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.relays, ignore_errors=True)

    def checkout(self, guard: PushGuard, repo: str, url: str, token: str | None, git_env: dict[str, str]) -> Path:
        """Clone `repo` at its default branch with `origin` pointing at its relay. Raises PushError."""
        relay = guard.add(repo, url, _auth_env(token), git_env)
        name = repo.split("/")[1]
        target = self.root / name
        if target.exists():  # two repositories with one name, from different owners
            target = self.root / repo.replace("/", "-")
        done = _git(["clone", "--quiet", str(relay.path), str(target)], git_env)
        if done.returncode != 0:
            raise PushError(f"cannot check out {repo}: {done.stderr.strip()}")
        for key, value in (("user.name", "routinely[bot]"), ("user.email", "routinely@localhost"),
                           ("push.default", "current")):
            _git(["config", key, value], git_env, target)
        self.repos.append(target)
        return target

    def write_mcp(self, connectors: Mapping[str, Any], wanted: list[str] | None, environ: Mapping[str, str]) -> Path:
        """.mcp.json with the routine's connectors (all when it names none), ${VAR} expanded
        from the service's environment at session start (unset variables become "")."""
        chosen = {name: connectors[name] for name in (wanted if wanted is not None else connectors)}
        expanded = json.loads(_VAR.sub(lambda m: _json_escape(environ.get(m.group(1), "")), json.dumps(chosen)))
        path = self.root / ".mcp.json"
        path.write_text(json.dumps({"mcpServers": expanded}, indent=2) + "\n")
        path.chmod(0o600)
        return path


def _json_escape(value: str) -> str:
    return json.dumps(value)[1:-1]


def _auth_env(token: str | None) -> dict[str, str]:
    """git settings carrying an installation token for the worker's own git commands only."""
    if not token:
        return {}
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}


def base_git_env() -> dict[str, str]:
    """What the worker's git commands run with: no prompts, no user config leaking in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LANG": "C.UTF-8",
    }
