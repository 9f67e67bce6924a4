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


def _labels(payload: Payload) -> list[str]:
    labels = _get(payload, "pull_request", "labels")
    if not isinstance(labels, list):
        return []  # absent, null or the wrong shape: no labels
    return [label["name"] for label in labels if isinstance(label, dict) and isinstance(label.get("name"), str)]


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
        "labels": (LIST, _labels),
        "is_draft": (BOOL, _flag("pull_request", "draft")),
        "is_merged": (BOOL, _flag("pull_request", "merged")),
        "from_fork": (BOOL, _from_fork),
    },
    "release": {
        "author": (STRING, _text("release", "author", "login")),
        "title": (STRING, _text("release", "name")),
        "body": (STRING, _text("release", "body")),
        "tag": (STRING, _text("release", "tag_name")),
        "target_branch": (STRING, _text("release", "target_commitish")),
        "is_draft": (BOOL, _flag("release", "draft")),
        "is_prerelease": (BOOL, _flag("release", "prerelease")),
    },
}

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
