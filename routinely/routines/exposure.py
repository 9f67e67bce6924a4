"""Triggers anyone can fire: warned about when a file is applied, never refused.

A stranger's issue, PR or comment is how a prompt injection reaches an agent with write
access. A github trigger on an event that people without any role on a public repository
can cause (opening an issue or a PR, commenting, reviewing, a fork PR's CI run) is
open unless it says `roles`, or filters on `author` / `author_association` with `equals` /
`is_one_of` (not negated), or — for pull requests — needs `from_fork: false` or
`is_merged: true`. Applying still succeeds: an open trigger can be exactly what is meant.
"""
from __future__ import annotations

from typing import Iterable

from filters import Filter
from routinely.routine_file import GithubTrigger, Routine

# what people with no role on a public repository can do, per event kind
OUTSIDER_ACTIONS: dict[str, frozenset[str]] = {
    "pull_request": frozenset({"opened", "edited", "closed", "reopened", "synchronize", "converted_to_draft",
                               "ready_for_review"}),
    "issues": frozenset({"opened", "edited", "closed", "reopened"}),
    "issue_comment": frozenset({"created", "edited", "deleted"}),
    "pull_request_review": frozenset({"submitted", "edited"}),
    "pull_request_review_comment": frozenset({"created", "edited", "deleted"}),
    "workflow_run": frozenset({"requested", "in_progress", "completed"}),  # a fork PR's CI runs too
}
_WHO = ("author", "author_association")
_ROLE_NEEDED = {("from_fork", False), ("is_merged", True)}  # pull_request facts only a collaborator makes


def outsider_events(trigger: GithubTrigger) -> list[str]:
    """The trigger's events that anyone could cause and that no roles or filter gates."""
    if trigger.roles:
        return []
    open_events = []
    for event in trigger.events:
        kind, _, action = event.partition(".")
        actions = OUTSIDER_ACTIONS.get(kind)
        if not actions or (action and action not in actions):
            continue
        if not any(_gates(f, kind) for f in trigger.filters):
            open_events.append(event)
    return open_events


def _gates(f: Filter, kind: str) -> bool:
    if kind not in f.kinds or f.spec.get("negate"):
        return False
    op, value = f.spec.get("op"), f.spec.get("value")
    if f.field in _WHO:
        return op in ("equals", "is_one_of")
    return kind == "pull_request" and op == "equals" and (f.field, value) in _ROLE_NEEDED


def warnings(routines: Iterable[Routine], github_app: bool = True) -> list[str]:
    """One line per open trigger, naming the routine and the trigger as apply errors do; and,
    without a GitHub App (`github_app` False), one per trigger with `roles`, which then
    drops every firing (a sender's role is asked of GitHub)."""
    lines = []
    for routine in routines:
        for index, trigger in enumerate(routine.triggers, start=1):
            if trigger.github is None:
                continue
            if trigger.github.compiled.roles and not github_app:
                lines.append(
                    f"routine {routine.name!r} (account {routine.account}), trigger {index} (github): roles need a "
                    "GitHub App to ask a sender's role (GITHUB_APP_ID, GITHUB_PRIVATE_KEY); without one every "
                    "firing is dropped (role)")
            events = outsider_events(trigger.github.compiled)
            if events:
                lines.append(
                    f"routine {routine.name!r} (account {routine.account}), trigger {index} (github): anyone who can "
                    f"open an issue, a pull request or a comment can fire it on {', '.join(events)}; add "
                    "roles: [admin, maintain, write] or an author_association filter unless that is meant")
    return lines
