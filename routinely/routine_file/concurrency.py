"""`concurrency:` — at most one session per group (a routine's, or a github trigger's: the
trigger's wins), as GitHub Actions' `concurrency:`.

`group` is a template over the event's fields, `{name}` each: `{repository}`, `{event}`, a
filter field of the trigger's event kinds (`{head_branch}`, `{author}`; routinely/filters
names them) or a path into the payload under one of the kind's objects
(`{pull_request.number}`, `{issue.number}`, `{workflow_run.head_sha}`). As a filter's field, each name must
exist for at least one event kind of the triggers the group applies to (a typo is refused
when applied); a firing whose event lacks one — or that has no event: api, schedule, a
manual run — joins no group, so a constant group (no field) is what makes those run one at a
time. Rendered per firing in Python (routinely.firing.start_plan); the start script does the rest.
"""
from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, Iterable

from filters import FIELDS
from filters.fields import LIST, BOOL
from routinely.routine_file.errors import refuse
from routinely.routine_file.fields import Checked, Model, flag, whole

FIRING_FIELDS = ("repository", "event")  # of every github firing, whatever its kind
# the payload's own objects a path may start from, by event kind (GitHub's webhook shapes)
ROOTS = {
    "pull_request": ("pull_request",),
    "release": ("release",),
    "issues": ("issue",),
    "issue_comment": ("issue", "comment"),
    "pull_request_review": ("pull_request", "review"),
    "pull_request_review_comment": ("pull_request", "comment"),
    "workflow_run": ("workflow_run",),
    "push": ("head_commit",),
}
COMMON_ROOTS = ("repository", "sender")  # every event kind's payload has them
MAX_GROUP_CHARS = 200  # a rendered group longer than this is keyed by its digest (routinely.storage.keys)
_PLACE = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")


def _names(template: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.strip() for m in _PLACE.findall(template)))


def _group(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_GROUP_CHARS:
        raise refuse(f"concurrency.group takes a template such as \"{{repository}}#{{pull_request.number}}\" "
                     f"(1..{MAX_GROUP_CHARS} characters), got {value!r}")
    if "{" in _PLACE.sub("", value) or "}" in _PLACE.sub("", value):
        raise refuse(f"concurrency.group: a brace that opens or closes no {{field}} in {value!r}")
    bad = [n for n in _names(value) if not _NAME.match(n)]
    if bad:
        raise refuse(f"concurrency.group: {bad[0]!r} is not a field name (write {{head_branch}} or {{pull_request.number}})")
    return value


def missing(name: str, kind: str) -> bool:
    """Whether events of `kind` have no field `name` a group could name."""
    if name in FIRING_FIELDS or name in FIELDS[kind]:
        return False
    root = name.partition(".")[0]
    return "." not in name or root not in ROOTS[kind] + COMMON_ROOTS


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return ""  # absent, null or an object: empty, as GitHub Actions renders a missing value


def _at(payload: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(payload, dict):
            return None
        payload = payload.get(part)
    return payload


class Concurrency(Model):
    """`concurrency: {group, cancel_in_progress, debounce_seconds}` — at most one session of
    the routine per rendered group runs; a newer firing cancels the running one
    (`cancel_in_progress`) or takes the place of the waiting one (drop `superseded`);
    `debounce_seconds` holds a session that long, and a newer firing meanwhile replaces it."""

    shape = "concurrency takes {group: TEMPLATE, cancel_in_progress: true|false, debounce_seconds: N}"
    group: Annotated[str, Checked(_group)]
    cancel_in_progress: Annotated[bool, flag("concurrency.cancel_in_progress")] = False
    debounce_seconds: Annotated[int, whole("concurrency.debounce_seconds", 0, 3600)] = 0

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """The names the group template reads, each once."""
        return _names(self.group)

    def check(self, kinds: Iterable[str], at: str | None = None) -> None:
        """Refuse a template naming a field none of `kinds` (the event kinds of the github
        triggers it applies to) has, or any field when there are none."""
        kinds = sorted(set(kinds))
        for name in self.fields:
            if not kinds:
                raise refuse(f"concurrency.group names {{{name}}}, but none of the triggers it applies to has an "
                             "event to read it from: put the group on a github trigger, or make it a constant", at=at)
            if all(missing(name, k) for k in kinds):
                fields = sorted(set(FIRING_FIELDS) | {f for k in kinds for f in FIELDS[k]})
                roots = sorted({r for k in kinds for r in ROOTS[k] + COMMON_ROOTS})
                raise refuse(f"concurrency.group names {{{name}}}, which {' and '.join(kinds)} events do not have; "
                             f"known: {', '.join(fields)}, or a path under {', '.join(roots)}", at=at)

    def render(self, kind: str | None, repository: str | None, event: str | None, payload: dict[str, Any] | None) -> str | None:
        """The group of one firing; None when the template names a field its event (if any)
        does not have: it then joins no group."""
        if not self.fields:
            return self.group
        if kind not in FIELDS or payload is None or any(missing(name, kind) for name in self.fields):
            return None

        def value(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name == "repository":
                return repository or ""
            if name == "event":
                return event or ""
            if name in FIELDS[kind]:
                kind_of, read = FIELDS[kind][name]
                got = read(payload)
                return _text(got) if kind_of in (LIST, BOOL) else str(got)
            return _text(_at(payload, name))

        return _PLACE.sub(value, self.group)
