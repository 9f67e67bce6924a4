"""The filterable fields of each event kind, read from a webhook payload as CONTRACT.md says."""
from __future__ import annotations

from typing import Any, Callable

STRING, LIST, BOOL = "string", "list", "bool"

Payload = dict[str, Any]


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _text(*path: str) -> Callable[[Payload], str]:
    def read(payload: Payload) -> str:
        value = _get(payload, *path)
        return value if isinstance(value, str) else ""  # null (and absent) read as ""

    return read


def _flag(*path: str) -> Callable[[Payload], bool]:
    return lambda payload: _get(payload, *path) is True  # null reads as false


def _names(path: tuple[str, ...], key: str) -> Callable[[Payload], list[str]]:
    """The `key` of each object in the list at `path` (label names, assignee logins)."""

    def read(payload: Payload) -> list[str]:
        items = _get(payload, *path)
        items = items if isinstance(items, list) else []
        return [item[key] for item in items if isinstance(item, dict) and isinstance(item.get(key), str)]

    return read


def _changed_files(payload: Payload) -> list[str]:
    """Every path added, modified or removed by a push's commits, each once, in order."""
    seen: dict[str, None] = {}
    commits = payload.get("commits")
    for commit in commits if isinstance(commits, list) else []:
        if not isinstance(commit, dict):
            continue
        for part in ("added", "modified", "removed"):
            paths = commit.get(part)
            for path in paths if isinstance(paths, list) else []:
                if isinstance(path, str):
                    seen.setdefault(path, None)
    return list(seen)


def _present(*path: str) -> Callable[[Payload], bool]:
    return lambda payload: _get(payload, *path) is not None


def _from_fork(payload: Payload) -> bool:
    head_repo = _get(payload, "pull_request", "head", "repo")
    if not isinstance(head_repo, dict):
        return True  # GitHub nulls head.repo when the fork was deleted
    head, base = head_repo.get("full_name"), _get(payload, "pull_request", "base", "repo", "full_name")
    if isinstance(head, str) and isinstance(base, str):
        return head.lower() != base.lower()  # GitHub's repository names ignore case, as routing does
    return head != base


# kind -> field -> (type, reader)
FIELDS: dict[str, dict[str, tuple[str, Callable[[Payload], Any]]]] = {
    "pull_request": {
        "author": (STRING, _text("pull_request", "user", "login")),
        "title": (STRING, _text("pull_request", "title")),
        "body": (STRING, _text("pull_request", "body")),
        "base_branch": (STRING, _text("pull_request", "base", "ref")),
        "head_branch": (STRING, _text("pull_request", "head", "ref")),
        "labels": (LIST, _names(("pull_request", "labels"), "name")),
        "is_draft": (BOOL, _flag("pull_request", "draft")),
        "is_merged": (BOOL, _flag("pull_request", "merged")),
        "from_fork": (BOOL, _from_fork),
        "author_association": (STRING, _text("pull_request", "author_association")),
    },
    "release": {
        "author": (STRING, _text("release", "author", "login")),
        "title": (STRING, _text("release", "name")),
        "body": (STRING, _text("release", "body")),
        "tag": (STRING, _text("release", "tag_name")),
        "target_branch": (STRING, _text("release", "target_commitish")),
        "is_draft": (BOOL, _flag("release", "draft")),
        "is_prerelease": (BOOL, _flag("release", "prerelease")),
        "author_association": (STRING, _text("release", "author_association")),  # GitHub sends none: ""
    },
    "issues": {
        "author": (STRING, _text("issue", "user", "login")),
        "title": (STRING, _text("issue", "title")),
        "body": (STRING, _text("issue", "body")),
        "labels": (LIST, _names(("issue", "labels"), "name")),
        "assignees": (LIST, _names(("issue", "assignees"), "login")),
        "state": (STRING, _text("issue", "state")),
        "author_association": (STRING, _text("issue", "author_association")),
    },
    "issue_comment": {
        "author": (STRING, _text("comment", "user", "login")),
        "body": (STRING, _text("comment", "body")),
        "on_pull_request": (BOOL, _present("issue", "pull_request")),
        "author_association": (STRING, _text("comment", "author_association")),
    },
    "pull_request_review": {
        "author": (STRING, _text("review", "user", "login")),
        "body": (STRING, _text("review", "body")),
        "state": (STRING, _text("review", "state")),
        "author_association": (STRING, _text("review", "author_association")),
    },
    "pull_request_review_comment": {
        "author": (STRING, _text("comment", "user", "login")),
        "body": (STRING, _text("comment", "body")),
        "author_association": (STRING, _text("comment", "author_association")),
    },
    "workflow_run": {
        "name": (STRING, _text("workflow_run", "name")),
        "conclusion": (STRING, _text("workflow_run", "conclusion")),  # null until completed: ""
        "head_branch": (STRING, _text("workflow_run", "head_branch")),
        "event": (STRING, _text("workflow_run", "event")),
        "author_association": (STRING, _text("workflow_run", "author_association")),  # GitHub sends none: ""
    },
    "push": {
        "ref": (STRING, _text("ref")),
        "pusher": (STRING, _text("pusher", "name")),
        "files": (LIST, _changed_files),
        "author_association": (STRING, _text("author_association")),  # GitHub sends none: ""
    },
}

# the values GitHub documents for author_association (the field itself is a plain string)
AUTHOR_ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR", "CONTRIBUTOR", "FIRST_TIME_CONTRIBUTOR", "FIRST_TIMER",
                       "NONE", "MANNEQUIN")

EVENT_KINDS = frozenset(FIELDS)


class Fields(dict):
    """A payload's fields of one kind, each read on first use: routing pays only for the
    fields its filters name."""

    def __init__(self, kind: str, payload: Payload) -> None:
        super().__init__()
        self._readers = FIELDS[kind]
        self._payload = payload

    def __missing__(self, name: str) -> Any:
        value = self[name] = self._readers[name][1](self._payload)
        return value


def extract_fields(kind: str, payload: Payload) -> dict[str, Any]:
    """Every field of the kind, read at once: what filters on this payload would see."""
    fields = Fields(kind, payload)
    return {name: fields[name] for name in FIELDS[kind]}
