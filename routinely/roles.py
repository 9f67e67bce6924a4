"""Who may fire: the actor's repository role, asked of GitHub by the App, cached in Redis.

`GET /repos/{owner}/{repo}/collaborators/{username}/permission` with the installation
token of the repository; GitHub's `role_name` (admin, maintain, write, triage, read, or a
custom role's name) is the answer, kept for `keys.ROLE_TTL` seconds so a burst of comments
costs one request. Only firings of triggers that declare `roles` ever ask, so ingest pays
nothing for the rest. Any failure to learn the role refuses the firing (fail closed).
"""
from __future__ import annotations

from typing import Any

import redis
from githubkit import GitHub, TokenAuthStrategy

from routinely import keys
from routinely.config import Settings
from routinely.github_auth import InstallationTokens, TokenError

NONE = "none"  # not a collaborator, or no such user
TIMEOUT_SECONDS = 5.0  # ingest waits on this: a slow GitHub must not hold a webhook worker long


class RoleError(Exception):
    """The role could not be learnt; str() says why, without any secret."""


class Roles:
    def __init__(self, settings: Settings, tokens: InstallationTokens | None = None) -> None:
        self.settings = settings
        self.tokens = tokens or InstallationTokens(settings)

    def role(self, conn: redis.Redis, repo: str, login: str, payload: dict[str, Any]) -> str:
        """`login`'s role on `repo` ("none" when not a collaborator). Raises RoleError."""
        key = keys.role(repo, login)
        cached = conn.get(key)
        if cached is not None:
            return cached.decode()
        found = self._ask(conn, repo, login, payload)
        conn.set(key, found, ex=keys.ROLE_TTL)
        return found

    def _ask(self, conn: redis.Redis, repo: str, login: str, payload: dict[str, Any]) -> str:
        if not self.settings.github_app:
            raise RoleError("no GitHub App is configured (GITHUB_APP_ID, GITHUB_PRIVATE_KEY) to ask GitHub for roles")
        try:
            inst = payload.get("installation")
            if isinstance(inst, dict) and isinstance(inst.get("id"), int):
                token = self.tokens.for_installation(inst["id"])
            else:
                token = self.tokens.for_repository(conn, repo)
        except TokenError as exc:
            raise RoleError(str(exc)) from None
        owner, _, name = repo.partition("/")
        try:
            with GitHub(TokenAuthStrategy(token), base_url=self.settings.github_api_url,
                        timeout=TIMEOUT_SECONDS, auto_retry=False) as gh:
                data = gh.rest.repos.get_collaborator_permission_level(owner, name, login).json()
        except Exception as exc:  # githubkit raises RequestFailed / transport errors
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 404:
                return NONE  # GitHub's answer for a user who is no collaborator (or no user at all)
            raise RoleError(f"GitHub did not say {login}'s role on {repo} "
                            f"({f'HTTP {status}' if status else type(exc).__name__})") from None
        role = data.get("role_name") or data.get("permission") if isinstance(data, dict) else None
        return role if isinstance(role, str) and role else NONE
