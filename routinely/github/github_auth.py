"""Installation tokens: minted with the App's JWT (githubkit), cached until shortly before expiry;
and `app_client`, the App acting as itself (its JWT) on its own endpoints (`/app/...`).

Tokens live only in this worker's memory (workers run jobs in-process for that reason):
never in Redis, a log, the agent's environment or a checkout's git config.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime

from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy

from routinely.storage import keys
from routinely.config import Settings

REFRESH_BEFORE_SECONDS = 300  # a clone or push must never start with a token about to expire
APP_TIMEOUT_SECONDS = 30.0


def app_client(settings: Settings, cache: MemCacheStrategy | None = None) -> GitHub:
    """A githubkit client authenticated as the App (a JWT from GITHUB_APP_ID and the private
    key), for the App's own endpoints such as `GET /app/hook/deliveries`; use it as a context
    manager. `cache` keeps its JWTs (default: one of its own, never githubkit's process-wide one)."""
    auth = AppAuthStrategy(settings.github_app_id, settings.github_private_key)
    return GitHub(auth, base_url=settings.github_api_url, cache_strategy=cache or MemCacheStrategy(),
                  timeout=APP_TIMEOUT_SECONDS, http_cache=False,  # a listing must be fresh
                  auto_retry=False)  # a pass that failed is tried again by the next one


class TokenError(Exception):
    """No installation token could be had; str() says why without any secret."""


class InstallationTokens:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._jwt_cache = MemCacheStrategy()

    def for_repository(self, conn, repo: str, timeout: float = APP_TIMEOUT_SECONDS) -> str | None:
        """A token for `owner/repo`, or None when no GitHub App is configured."""
        if not self.settings.github_app:
            return None
        installation = conn.hget(keys.INSTALLATIONS, repo.lower())
        if installation is None:
            raise TokenError(f"no installation of the GitHub App covers {repo}: install the App on it")
        return self.for_installation(int(installation), timeout)

    def for_installation(self, installation_id: int, timeout: float = APP_TIMEOUT_SECONDS) -> str:
        """A token for the installation, minted within `timeout` s when none is cached. Raises TokenError."""
        with self._lock:
            cached = self._cache.get(installation_id)
            if cached and cached[1] - REFRESH_BEFORE_SECONDS > time.time():
                return cached[0]
            token, expires = self._mint(installation_id, timeout)
            self._cache[installation_id] = (token, expires)
            return token

    def _mint(self, installation_id: int, timeout: float) -> tuple[str, float]:
        auth = AppAuthStrategy(self.settings.github_app_id, self.settings.github_private_key)
        try:
            # a cache of this instance's own: githubkit's default keeps JWTs per App id for the
            # whole process, so a rotated key (or a second App with that id) got a stale JWT
            # the HTTP cache off: with it githubkit does not hold the timeout (a mint is never cached anyway)
            with GitHub(auth, base_url=self.settings.github_api_url, cache_strategy=self._jwt_cache,
                        timeout=timeout, http_cache=False) as gh:
                data = gh.rest.apps.create_installation_access_token(installation_id).parsed_data
        except Exception as exc:  # githubkit raises RequestFailed / transport errors
            status = getattr(getattr(exc, "response", None), "status_code", None)
            detail = f"HTTP {status}" if status else type(exc).__name__
            raise TokenError(f"GitHub refused an installation token for installation {installation_id} ({detail}): "
                             "check GITHUB_APP_ID, the private key and that the App is installed") from None
        expires = data.expires_at
        expires_ts = expires.timestamp() if isinstance(expires, datetime) else time.time() + 3600
        return data.token, expires_ts
