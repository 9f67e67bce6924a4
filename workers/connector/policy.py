"""The routine's `github:` policy, enforced before GitHub is called.

`Policy.refusal` answers the one line saying why a call may not go ahead (and what to
change), or None; nothing here talks to GitHub. The same policy writes the prompt's
paragraph, so what the agent is told and what the server enforces cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from routinely.routine_file import GITHUB_WRITES, Routine


@dataclass(frozen=True)
class Policy:
    repositories: tuple[str, ...]
    branch_prefix: str
    unrestricted: bool
    writes: tuple[str, ...]
    max_writes: int
    draft_prs: bool
    allow_approve: bool

    @classmethod
    def of(cls, routine: Routine) -> "Policy":
        """The routine's `github:` block with what it reads of the rest (repositories, branch_prefix)."""
        github = routine.github_policy
        return cls(
            repositories=tuple(routine.repositories),
            branch_prefix=routine.branch_prefix,
            unrestricted=routine.allow_unrestricted_branch_pushes,
            writes=tuple(github.writes),
            max_writes=github.max_writes,
            draft_prs=github.draft_prs,
            allow_approve=github.allow_approve,
        )

    def repository(self, owner: str, repo: str) -> str | None:
        """The routine's spelling of owner/repo (GitHub compares ignoring case), or None."""
        wanted = f"{owner}/{repo}".lower()
        return next((r for r in self.repositories if r.lower() == wanted), None)

    def refusal(self, tool: str, owner: str, repo: str, args: dict[str, Any], writes_made: int,
                pushed: Callable[[str, str], bool]) -> str | None:
        """Why this call is refused, or None. `pushed(repo, branch)` asks the push guard."""
        full = self.repository(owner, repo)
        if full is None:
            return (f"routinely: {owner}/{repo} is not one of this routine's repositories "
                    f"({', '.join(self.repositories) or 'none'}); add it to the routine's repositories")
        if tool not in GITHUB_WRITES:
            return None
        if tool not in self.writes:
            return f"routinely: {tool} is not in this routine's github.writes ({', '.join(self.writes) or 'none'}); add it there to allow it"
        if tool == "create_pull_request_review" and (args.get("event") or "").upper() == "APPROVE" and not self.allow_approve:
            return "routinely: a review with event APPROVE is refused (github.allow_approve is false); use COMMENT or REQUEST_CHANGES"
        if tool == "create_pull_request":
            head = self._head_refusal(full, owner, args.get("head") or "", pushed)
            if head:
                return head
        if writes_made >= self.max_writes:
            return f"routinely: this session has made its {self.max_writes} writes (github.max_writes); raise github.max_writes to allow more"
        return None

    def _head_refusal(self, full: str, owner: str, head: str, pushed: Callable[[str, str], bool]) -> str | None:
        head_owner, sep, branch = head.rpartition(":")
        if sep and head_owner.lower() != owner.lower():
            return f"routinely: head {head!r} is in another owner's repository; open pull requests only from branches this session pushed to {full}"
        if not self.unrestricted and not branch.startswith(self.branch_prefix):
            return f"routinely: head {branch!r} is outside this routine's branch_prefix {self.branch_prefix!r}; push to a branch such as {self.branch_prefix}fix and use that"
        if not pushed(full, branch):
            return f"routinely: branch {branch!r} was not pushed to {full} by this session; push it first (git push origin {branch})"
        return None

    def prompt(self, app_configured: bool) -> str:
        """The prompt's paragraph about the connector, under this policy."""
        if not app_configured:
            return ("The `github` MCP server in .mcp.json is this service's GitHub connector, but no GitHub App is "
                    "configured here, so its tools answer with an error: do not rely on them.")
        repos = ", ".join(self.repositories) or "none"
        text = (f"The `github` MCP server in .mcp.json acts on GitHub for you (you hold no GitHub token). It reads "
                f"pull requests, issues, commits and files of {repos}, and only those.")
        if not self.writes or self.max_writes == 0:
            return text + " It may not write anything in this routine."
        text += f" It may write with {', '.join(self.writes)}, at most {self.max_writes} writes in this session."
        if "create_pull_request" in self.writes:
            where = "any branch" if self.unrestricted else f"a branch under `{self.branch_prefix}`"
            text += f" A pull request must come from {where} that you pushed in this session"
            text += ", and opens as a draft." if self.draft_prs else "."
        if "create_pull_request_review" in self.writes and not self.allow_approve:
            text += " Reviews may COMMENT or REQUEST_CHANGES, never APPROVE."
        return text
