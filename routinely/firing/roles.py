"""Who may fire: the actor's repository role, asked of GitHub by the App, cached in Redis.

`GET /repos/{owner}/{repo}/collaborators/{username}/permission` with the installation
token of the repository; GitHub's `role_name` (admin, maintain, write, triage, read, or a
custom role's name) is the answer, kept for `keys.ROLE_TTL` seconds so a burst of comments
costs one request. Only sessions of triggers that declare `roles` ever ask, and never on the
request path: routinely.firing.gate reads the cache only and marks the session with a `RoleCheck`;
the worker asks GitHub before the session's sandbox exists (workers/role_check.py). Any
failure to learn the role refuses the firing (fail closed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import redis
from githubkit import GitHub, TokenAuthStrategy
from githubkit.exception import RequestTimeout

from routinely.storage import keys
from routinely.config import Settings
from routinely.github.github_auth import InstallationTokens, TokenError

NONE = "none"  # not a collaborator, or no such user
# the whole look-up (a token mint when needed, then the permission GET) ends by then; githubkit's
# HTTP cache is off, since with it on the timeout does not hold (a 3 s answer took 3 s under 0.3 s)
DEADLINE_SECONDS = 5.0


class RoleError(Exception):
    """The role could not be learnt; str() says why, without any secret."""


@dataclass(frozen=True)
class RoleCheck:
    """What a session must learn before it runs (kept on its record as `role_check`): the
    role of `actor` on `repository` must be one of `roles` (the union of its matched triggers')."""

    roles: tuple[str, ...]
    actor: str
    repository: str
    installation: int | None = None  # the delivery's installation: its token asks

    def encode(self) -> str:
        return orjson.dumps({"roles": list(self.roles), "actor": self.actor, "repository": self.repository,
                             "installation": self.installation}).decode()

    @classmethod
    def decode(cls, raw: bytes | str) -> "RoleCheck":
        data = orjson.loads(raw)
        return cls(tuple(data["roles"]), data["actor"], data["repository"], data.get("installation"))

    def refusal(self, role: str) -> str | None:
        """None when `role` lets the actor fire; else the drop's detail."""
        if role in self.roles:
            return None
        return f"{self.actor} has role {role} on {self.repository}; the trigger wants {', '.join(self.roles)}"


class Roles:
    def __init__(self, settings: Settings, tokens: InstallationTokens | None = None,
                 deadline: float = DEADLINE_SECONDS) -> None:
        self.settings = settings
        self.tokens = tokens or InstallationTokens(settings)
        self.deadline = deadline

    @staticmethod
    def cached(conn: redis.Redis, repo: str, login: str) -> str | None:
        """The role a recent look-up left in Redis, or None: never asks GitHub."""
        found = conn.get(keys.role(repo, login))
        return found.decode() if found is not None else None

    def role(self, conn: redis.Redis, repo: str, login: str, installation: int | None = None) -> str:
        """`login`'s role on `repo` ("none" when not a collaborator), from the cache or GitHub
        within `deadline` seconds. Raises RoleError (not cached) when GitHub did not say."""
        cached = self.cached(conn, repo, login)
        if cached is not None:
            return cached
        found = self._ask(conn, repo, login, installation)
        conn.set(keys.role(repo, login), found, ex=keys.ROLE_TTL)
        return found

    def _ask(self, conn: redis.Redis, repo: str, login: str, installation: int | None) -> str:
        if not self.settings.github_app:
            raise RoleError("no GitHub App is configured (GITHUB_APP_ID, GITHUB_PRIVATE_KEY) to ask GitHub for roles")
        ends = time.monotonic() + self.deadline
        try:
            if installation is not None:
                token = self.tokens.for_installation(installation, timeout=self.deadline)
            else:
                token = self.tokens.for_repository(conn, repo, timeout=self.deadline)
        except TokenError as exc:
            raise RoleError(str(exc)) from None
        left = ends - time.monotonic()
        if left <= 0:
            raise RoleError(f"GitHub did not say {login}'s role on {repo} within {self.deadline:g} s (timeout)")
        owner, _, name = repo.partition("/")
        try:
            with GitHub(TokenAuthStrategy(token), base_url=self.settings.github_api_url,
                        timeout=httpx.Timeout(left), http_cache=False, auto_retry=False) as gh:
                data: Any = gh.rest.repos.get_collaborator_permission_level(owner, name, login).json()
        except RequestTimeout:
            raise RoleError(f"GitHub did not say {login}'s role on {repo} within {self.deadline:g} s (timeout)") from None
        except Exception as exc:  # githubkit raises RequestFailed / transport errors
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 404:
                return NONE  # GitHub's answer for a user who is no collaborator (or no user at all)
            cause = type(getattr(exc, "exc", None) or exc).__name__  # e.g. ConnectError: GitHub unreachable
            raise RoleError(f"GitHub did not say {login}'s role on {repo} "
                            f"({f'HTTP {status}' if status else cause})") from None
        role = data.get("role_name") or data.get("permission") if isinstance(data, dict) else None
        return role if isinstance(role, str) and role else NONE
