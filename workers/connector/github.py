"""GitHub's REST API as the connector uses it: one request with an installation token.

The token is passed in by the server for each call and lives only in this process; errors
come back as one line that names the permission the App lacks, never the token.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import httpx
from githubkit import GitHub, TokenAuthStrategy
from githubkit.exception import GitHubException, RequestFailed

JSON = "application/vnd.github+json"
TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Request:
    """One REST call on a repository: `tail` is the path after /repos/OWNER/REPO."""

    method: str
    tail: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    accept: str = JSON


@dataclass(frozen=True)
class Reply:
    status: int
    text: str

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.text) if self.text else None


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    """One TLS context per process: loading the CA bundle for each call cost ~20 ms of its ~25."""
    return httpx.create_ssl_context()


class GitHubFailed(Exception):
    """GitHub did not do it; str() is the one line for the agent and the log (no secret)."""

    def __init__(self, line: str, status: int | None = None) -> None:
        super().__init__(line)
        self.status = status


async def send(api_url: str, token: str, repo: str, request: Request, permission: str) -> Reply:
    """Send `request` for `repo` (owner/name). Raises GitHubFailed."""
    params = {k: v for k, v in request.params.items() if v is not None}
    try:
        async with GitHub(TokenAuthStrategy(token), base_url=api_url, auto_retry=False, http_cache=False,
                          timeout=TIMEOUT_SECONDS, ssl_verify=_tls()) as gh:
            resp = await gh.arequest(request.method, f"/repos/{repo}{request.tail}", params=params or None,
                                     json=request.body, headers={"Accept": request.accept})
    except RequestFailed as exc:
        raise GitHubFailed(refusal_line(exc.response.status_code, repo, permission, _message(exc.response)),
                           exc.response.status_code) from None
    except GitHubException as exc:  # transport errors and timeouts: say what, not the request
        raise GitHubFailed(f"routinely: GitHub could not be reached ({type(exc).__name__}); try again later") from None
    return Reply(resp.status_code, resp.text)


def refusal_line(status: int, repo: str, permission: str, message: str) -> str:
    """What GitHub's refusal means for the App, in one line."""
    said = f" (GitHub: {message})" if message else ""
    if status == 401:
        return f"routinely: GitHub rejected the App's installation token for {repo} (HTTP 401){said}; check the App's id and private key"
    if status == 403 and "rate limit" in message.lower():
        return f"routinely: GitHub's rate limit for the App's installation is spent (HTTP 403){said}; try again later"
    if status == 403:
        return (f"routinely: GitHub refused this on {repo} (HTTP 403){said}: the App lacks the {permission} permission; "
                "grant it in the App's settings and accept it on the installation")
    if status == 404:
        return (f"routinely: GitHub answered 404 on {repo}{said}: it does not exist, or the App lacks the {permission} "
                "permission there; grant it in the App's settings and accept it on the installation")
    return f"routinely: GitHub refused the call on {repo} (HTTP {status}){said}"


def _message(response: Any) -> str:
    try:
        message = str(response.json().get("message", ""))
    except Exception:
        message = ""
    return " ".join(message.split())[:200]
