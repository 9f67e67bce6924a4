"""The connector's tools, named and shaped like the reference GitHub MCP server's.

Each tool only turns its arguments into a `Call` (which repository, which REST request);
the server decides whether it may run (policy), runs it with the installation token and
records it. Arguments use the contract's names: `owner`, `repo`, `pull_number`,
`issue_number`.
"""

import base64
import binascii
from dataclasses import dataclass, field
from typing import Annotated, Any, Awaitable, Callable, Literal
from urllib.parse import quote

import orjson
from mcp.server import MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from routinely.routine_file import GITHUB_WRITES
from workers.connector.github import Reply, Request
from workers.connector.policy import Policy

# what a 403/404 means the App is missing, per tool
PERMISSIONS = {
    "get_pull_request": "pull_requests: read", "get_pull_request_files": "pull_requests: read",
    "get_pull_request_diff": "pull_requests: read", "list_pull_requests": "pull_requests: read",
    "get_issue": "issues: read", "list_issues": "issues: read",
    "list_commits": "contents: read", "get_file_contents": "contents: read",
    "add_issue_comment": "issues: write", "create_pull_request_review": "pull_requests: write",
    "create_pull_request": "pull_requests: write", "create_issue": "issues: write", "update_issue": "issues: write",
}


def as_text(reply: Reply) -> str:
    return reply.text


def write_summary(reply: Reply) -> str:
    """What the agent needs of what it made: its id, number, URL (and draft for a PR)."""
    data = reply.json() or {}
    keep = {k: data[k] for k in ("id", "number", "html_url", "state", "draft") if k in data}
    return orjson.dumps(keep).decode()


def file_text(reply: Reply) -> str:
    """A file's decoded text; a directory's listing as GitHub gave it."""
    data = reply.json()
    if isinstance(data, dict) and data.get("type") == "file" and data.get("encoding") == "base64":
        try:
            return base64.b64decode(data.get("content") or "").decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return orjson.dumps({k: v for k, v in data.items() if k != "content"} | {"binary": True}).decode()
    return reply.text


@dataclass(frozen=True)
class Call:
    tool: str
    owner: str
    repo: str
    number: int | None  # the issue or pull request acted on, when there is one
    request: Request
    args: dict[str, Any] = field(default_factory=dict)  # what the policy looks at (head, event)
    shape: Callable[[Reply], str] = as_text

    @property
    def write(self) -> bool:
        return self.tool in GITHUB_WRITES

    @property
    def permission(self) -> str:
        return PERMISSIONS[self.tool]


def tool_error(line: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=line)], is_error=True)


Owner = Annotated[str, Field(description="Repository owner (username or organization)")]
Repo = Annotated[str, Field(description="Repository name")]
PullNumber = Annotated[int, Field(description="Pull request number", ge=1)]
IssueNumber = Annotated[int, Field(description="Issue number (a pull request's number works too)", ge=1)]
Page = Annotated[int | None, Field(description="Page number for pagination (min 1)", ge=1)]
PerPage = Annotated[int | None, Field(description="Results per page for pagination (min 1, max 100)", ge=1, le=100)]
Labels = Annotated[list[str] | None, Field(description="Label names")]
Assignees = Annotated[list[str] | None, Field(description="Usernames to assign")]


class ReviewComment(BaseModel):
    path: Annotated[str, Field(description="Path of the file, relative to the repository root")]
    line: Annotated[int, Field(description="Line number in the file (the new version) to comment on", ge=1)]
    body: Annotated[str, Field(description="Comment text", min_length=1)]
    side: Annotated[Literal["LEFT", "RIGHT"] | None, Field(description="Side of the diff (default RIGHT)")] = None


def register(server: MCPServer, policy: Policy, run: Callable[[Call], Awaitable[CallToolResult]]) -> None:
    """Add every tool to `server`; each call goes through `run`."""

    def tool(fn: Callable[..., Awaitable[CallToolResult]], title: str, description: str) -> None:
        read_only = fn.__name__ not in GITHUB_WRITES
        server.add_tool(fn, description=description, structured_output=False,
                        annotations=ToolAnnotations(title=title, read_only_hint=read_only, destructive_hint=False))

    # -- read
    async def get_pull_request(owner: Owner, repo: Repo, pull_number: PullNumber) -> CallToolResult:
        return await run(Call("get_pull_request", owner, repo, pull_number, Request("GET", f"/pulls/{pull_number}")))

    async def get_pull_request_files(owner: Owner, repo: Repo, pull_number: PullNumber, page: Page = None,
                                     per_page: PerPage = None) -> CallToolResult:
        return await run(Call("get_pull_request_files", owner, repo, pull_number,
                              Request("GET", f"/pulls/{pull_number}/files", {"page": page, "per_page": per_page})))

    async def get_pull_request_diff(owner: Owner, repo: Repo, pull_number: PullNumber) -> CallToolResult:
        return await run(Call("get_pull_request_diff", owner, repo, pull_number,
                              Request("GET", f"/pulls/{pull_number}", accept="application/vnd.github.diff")))

    async def list_pull_requests(
        owner: Owner, repo: Repo,
        state: Annotated[Literal["open", "closed", "all"] | None, Field(description="Filter by state")] = None,
        head: Annotated[str | None, Field(description="Filter by head user/org and branch (user:branch)")] = None,
        base: Annotated[str | None, Field(description="Filter by base branch")] = None,
        sort: Annotated[Literal["created", "updated", "popularity", "long-running"] | None, Field(description="Sort by")] = None,
        direction: Annotated[Literal["asc", "desc"] | None, Field(description="Sort direction")] = None,
        page: Page = None, per_page: PerPage = None,
    ) -> CallToolResult:
        params = {"state": state, "head": head, "base": base, "sort": sort, "direction": direction, "page": page, "per_page": per_page}
        return await run(Call("list_pull_requests", owner, repo, None, Request("GET", "/pulls", params)))

    async def get_issue(owner: Owner, repo: Repo, issue_number: IssueNumber) -> CallToolResult:
        return await run(Call("get_issue", owner, repo, issue_number, Request("GET", f"/issues/{issue_number}")))

    async def list_issues(
        owner: Owner, repo: Repo,
        state: Annotated[Literal["open", "closed", "all", "OPEN", "CLOSED"] | None,
                         Field(description="Filter by state (default: open)")] = None,
        labels: Annotated[list[str] | None, Field(description="Only issues with all of these labels")] = None,
        since: Annotated[str | None, Field(description="Only issues updated at or after this time (ISO 8601: YYYY-MM-DDTHH:MM:SSZ)")] = None,
        sort: Annotated[Literal["created", "updated", "comments"] | None, Field(description="Sort by")] = None,
        direction: Annotated[Literal["asc", "desc"] | None, Field(description="Sort direction")] = None,
        page: Page = None, per_page: PerPage = None,
    ) -> CallToolResult:
        params = {"state": state.lower() if state else None, "labels": ",".join(labels) if labels else None,
                  "since": since, "sort": sort, "direction": direction, "page": page, "per_page": per_page}
        return await run(Call("list_issues", owner, repo, None, Request("GET", "/issues", params)))

    async def list_commits(
        owner: Owner, repo: Repo,
        sha: Annotated[str | None, Field(description="Commit SHA, branch or tag to list commits of (default: the default branch)")] = None,
        path: Annotated[str | None, Field(description="Only commits containing this file path")] = None,
        author: Annotated[str | None, Field(description="Author username or email address")] = None,
        since: Annotated[str | None, Field(description="Only commits after this date (ISO 8601)")] = None,
        until: Annotated[str | None, Field(description="Only commits before this date (ISO 8601)")] = None,
        page: Page = None, per_page: PerPage = None,
    ) -> CallToolResult:
        params = {"sha": sha, "path": path, "author": author, "since": since, "until": until, "page": page, "per_page": per_page}
        return await run(Call("list_commits", owner, repo, None, Request("GET", "/commits", params)))

    async def get_file_contents(
        owner: Owner, repo: Repo,
        path: Annotated[str, Field(description="Path to file/directory")] = "/",
        ref: Annotated[str | None, Field(description="Branch, tag or commit SHA (default: the default branch)")] = None,
    ) -> CallToolResult:
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return tool_error("routinely: path must not contain '.' or '..' segments; give the path from the repository root")
        tail = "/contents/" + quote("/".join(parts), safe="/")
        return await run(Call("get_file_contents", owner, repo, None, Request("GET", tail, {"ref": ref}), shape=file_text))

    # -- write
    async def add_issue_comment(
        owner: Owner, repo: Repo, issue_number: IssueNumber,
        body: Annotated[str, Field(description="Comment content", min_length=1)],
    ) -> CallToolResult:
        return await run(Call("add_issue_comment", owner, repo, issue_number,
                              Request("POST", f"/issues/{issue_number}/comments", body={"body": body}), shape=write_summary))

    async def create_pull_request_review(
        owner: Owner, repo: Repo, pull_number: PullNumber,
        body: Annotated[str | None, Field(description="The review's summary text")] = None,
        event: Annotated[Literal["APPROVE", "REQUEST_CHANGES", "COMMENT"],
                         Field(description="The review action (default COMMENT)")] = "COMMENT",
        comments: Annotated[list[ReviewComment] | None, Field(description="Inline comments on lines of the changed files")] = None,
        commit_id: Annotated[str | None, Field(description="SHA of the commit to review (default: the latest)")] = None,
    ) -> CallToolResult:
        review: dict[str, Any] = {"event": event}
        if body:
            review["body"] = body
        if commit_id:
            review["commit_id"] = commit_id
        if comments:
            review["comments"] = [c.model_dump(exclude_none=True) for c in comments]
        return await run(Call("create_pull_request_review", owner, repo, pull_number,
                              Request("POST", f"/pulls/{pull_number}/reviews", body=review), {"event": event},
                              shape=write_summary))

    async def create_pull_request(
        owner: Owner, repo: Repo,
        title: Annotated[str, Field(description="PR title", min_length=1)],
        head: Annotated[str, Field(description="Branch containing changes (one this session pushed)")],
        base: Annotated[str, Field(description="Branch to merge into")],
        body: Annotated[str | None, Field(description="PR description")] = None,
        draft: Annotated[bool | None, Field(description="Create as draft PR (this routine may force drafts)")] = None,
        maintainer_can_modify: Annotated[bool | None, Field(description="Allow maintainer edits")] = None,
    ) -> CallToolResult:
        pr = {"title": title, "head": head, "base": base, "draft": True if policy.draft_prs else bool(draft)}
        if body is not None:
            pr["body"] = body
        if maintainer_can_modify is not None:
            pr["maintainer_can_modify"] = maintainer_can_modify
        return await run(Call("create_pull_request", owner, repo, None, Request("POST", "/pulls", body=pr),
                              {"head": head}, shape=write_summary))

    async def create_issue(
        owner: Owner, repo: Repo,
        title: Annotated[str, Field(description="Issue title", min_length=1)],
        body: Annotated[str | None, Field(description="Issue body content")] = None,
        labels: Labels = None, assignees: Assignees = None,
    ) -> CallToolResult:
        issue = {k: v for k, v in {"title": title, "body": body, "labels": labels, "assignees": assignees}.items() if v is not None}
        return await run(Call("create_issue", owner, repo, None, Request("POST", "/issues", body=issue), shape=write_summary))

    async def update_issue(
        owner: Owner, repo: Repo, issue_number: IssueNumber,
        title: Annotated[str | None, Field(description="New title")] = None,
        body: Annotated[str | None, Field(description="New description")] = None,
        state: Annotated[Literal["open", "closed"] | None, Field(description="New state")] = None,
        labels: Annotated[list[str] | None, Field(description="New labels (replaces the issue's labels)")] = None,
        assignees: Annotated[list[str] | None, Field(description="New assignees (replaces the issue's assignees)")] = None,
    ) -> CallToolResult:
        changes = {k: v for k, v in {"title": title, "body": body, "state": state, "labels": labels,
                                     "assignees": assignees}.items() if v is not None}
        if not changes:
            return tool_error("routinely: update_issue needs at least one of title, body, state, labels, assignees")
        return await run(Call("update_issue", owner, repo, issue_number,
                              Request("PATCH", f"/issues/{issue_number}", body=changes), shape=write_summary))

    tool(get_pull_request, "Get pull request", "Get details of a specific pull request in a GitHub repository.")
    tool(get_pull_request_files, "Get pull request files", "Get the files changed in a specific pull request.")
    tool(get_pull_request_diff, "Get pull request diff", "Get the diff of a pull request.")
    tool(list_pull_requests, "List pull requests", "List and filter pull requests in a GitHub repository.")
    tool(get_issue, "Get issue", "Get details of a specific issue in a GitHub repository.")
    tool(list_issues, "List issues", "List issues in a GitHub repository (pull requests are listed too), filtered by "
         "state, labels and since (updated at or after).")
    tool(list_commits, "List commits", "Get list of commits of a branch in a GitHub repository.")
    tool(get_file_contents, "Get file or directory contents", "Get the contents of a file or directory from a GitHub repository.")
    tool(add_issue_comment, "Add comment to issue or pull request", "Add a comment to a specific issue in a GitHub "
         "repository. Use this tool with pull requests as well (pass the pull request number as issue_number).")
    tool(create_pull_request_review, "Create pull request review", "Create and submit a review on a pull request, "
         "with a summary body and inline comments on lines of the changed files.")
    tool(create_pull_request, "Open new pull request", "Create a new pull request in a GitHub repository from a branch this session pushed.")
    tool(create_issue, "Create issue", "Create a new issue in a GitHub repository.")
    tool(update_issue, "Update issue", "Update an existing issue or pull request: title, body, state, labels, assignees.")
