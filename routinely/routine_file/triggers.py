"""`triggers:` — what starts a routine: GitHub events, the fire API, schedules.

Each trigger is a one-key mapping (`- github: {…}`, `- api: {}`, `- schedule: {…}`). The
github and schedule bodies are compiled once, when validated: `GithubEvents.compiled` is
what routing matches (filters compiled, no pydantic on a delivery's path) and
`ScheduleTrigger.compiled` what the scheduler walks.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from filters import COMMAND_EVENTS, EVENT_KINDS, Filter, FilterError, compile_filters
from filters.command import NAME as COMMAND_NAME
from routinely.routine_file.concurrency import Concurrency
from routinely.routine_file.errors import refuse
from routinely.routine_file.fields import Checked, Model
from routinely.routines.schedules import DAYS, PRESETS, Schedule, ScheduleError, parse_schedule

ACTIONS = {
    "pull_request": {
        "assigned", "auto_merge_disabled", "auto_merge_enabled", "closed", "converted_to_draft",
        "demilestoned", "dequeued", "edited", "enqueued", "labeled", "locked", "milestoned",
        "opened", "ready_for_review", "reopened", "review_request_removed", "review_requested",
        "synchronize", "unassigned", "unlabeled", "unlocked",
    },
    "release": {"created", "deleted", "edited", "prereleased", "published", "released", "unpublished"},
    "issues": {
        "assigned", "closed", "deleted", "demilestoned", "edited", "labeled", "locked", "milestoned", "opened",
        "pinned", "reopened", "transferred", "typed", "unassigned", "unlabeled", "unlocked", "unpinned", "untyped",
    },
    "issue_comment": {"created", "deleted", "edited"},
    "pull_request_review": {"dismissed", "edited", "submitted"},
    "pull_request_review_comment": {"created", "deleted", "edited"},
    "workflow_run": {"completed", "in_progress", "requested"},
    "push": set(),  # push has no action: the event is `push`
}
ROLES = ("admin", "maintain", "write", "triage", "read")  # GitHub's repository roles (role_name)
Role = Literal[ROLES]


@dataclass(frozen=True)
class GithubTrigger:
    """One github trigger as routing matches it: events, compiled filters, command, roles."""

    events: tuple[str, ...]
    filters: tuple[Filter, ...]
    command: str | None = None  # fires only on a comment starting with /command
    roles: frozenset[str] = frozenset()  # empty: anyone; else the actor's repository role must be one
    concurrency: Concurrency | None = None  # this trigger's group (None: the routine's)


def _command(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("/"):
        value = value[1:]  # `command: /fix` means what `command: fix` does
    if not isinstance(value, str) or not COMMAND_NAME.match(value):
        raise refuse(f"command takes a word such as fix (letters, digits, '.', '_', '-'), got {value!r}")
    return value


def _roles(roles: Any) -> tuple[str, ...] | None:
    if roles is not None and (not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles)):
        raise refuse(f"roles takes a non-empty list of {', '.join(ROLES)}, got {roles!r}")
    return None if roles is None else tuple(dict.fromkeys(roles))


def _filters(value: Any) -> Any:
    if value is not None and not isinstance(value, list):
        raise refuse(f"filters must be a list, got {type(value).__name__}")
    return value or []


_FILTER_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["field", "op", "value"],
                  "properties": {"field": {"type": "string"},
                                 "op": {"enum": ["equals", "contains", "starts_with", "is_one_of", "is_not_one_of",
                                                 "matches_regex"]},
                                 "value": {}, "ignore_case": {"type": "boolean"}, "negate": {"type": "boolean"}}}


class GithubEvents(Model):
    """`github:` trigger: fires on these events of the routine's repositories when every
    filter holds (and the comment starts with /command, and the actor has one of roles)."""

    shape = "github takes {events: [...], filters: [...], command: NAME, roles: [...], concurrency: {...}}"
    sparse = True  # command and roles only when set, as written
    command: Annotated[str | None, Checked(_command)] = None
    # default: the comment events, for a command trigger; required otherwise
    events: tuple[str, ...] = Field(None, validate_default=True)  # type: ignore[assignment]
    filters: Annotated[list[dict[str, Any]], Checked(_filters, {"items": _FILTER_SCHEMA})] = []
    roles: Annotated[tuple[Role, ...] | None, Checked(_roles)] = None
    concurrency: Concurrency | None = None  # wins over the routine's

    @field_validator("events", mode="before")
    @classmethod
    def _events(cls, events: Any, info: ValidationInfo) -> Any:
        command = info.data.get("command")
        if events is None and command:
            events = list(COMMAND_EVENTS)
        if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
            raise refuse("events must be a non-empty list such as [pull_request.opened, release.published]")
        for event in events:
            kind, _, action = event.partition(".")
            if kind not in EVENT_KINDS:
                raise refuse(f"event {event!r} is not supported; routines start on {', '.join(sorted(EVENT_KINDS))} events")
            if action and action not in ACTIONS[kind]:
                known = ", ".join(sorted(ACTIONS[kind])) or f"none (write {kind})"
                raise refuse(f"event {event!r}: {action!r} is not a {kind} action; known: {known}")
            if command and event not in COMMAND_EVENTS:
                raise refuse(f"command fires on {' and '.join(COMMAND_EVENTS)} only, not on {event!r}")
        return events

    @model_validator(mode="after")
    def _compile(self) -> "GithubEvents":
        try:
            filters = compile_filters(self.filters, {e.partition(".")[0] for e in self.events})
        except FilterError as exc:
            raise refuse(str(exc)) from None
        if self.concurrency is not None:
            self.concurrency.check({e.partition(".")[0] for e in self.events})
        # set once here (frozen model; not a field): routing reads it on every delivery
        self.__dict__["compiled"] = GithubTrigger(tuple(self.events), filters, self.command, frozenset(self.roles or ()),
                                                   self.concurrency)
        return self

    @cached_property
    def compiled(self) -> GithubTrigger:  # always set by _compile
        raise AssertionError("validated GithubEvents carry their compiled form")


class ApiTrigger(Model):
    """`api: {}` — fired with a token (`routinely token create`); it takes no settings."""

    @classmethod
    def prepare(cls, data: Any, info: ValidationInfo) -> Any:
        if data not in (None, {}):
            raise refuse("api takes no settings (write api: {}); tokens come from `routinely token create`")
        return {}


class ScheduleTrigger(Model):
    """`schedule:` — a preset, a five-field cron or one `at`, in `timezone` (default: the
    account's, filled in when applied). Checked by routinely.routines.schedules, whose words it keeps."""

    sparse = True  # as written, timezone filled in: the schedule's id is a hash of it
    preset: Literal[PRESETS] | None = None
    cron: str | None = None
    at: str | None = None  # local time, "2026-12-01T09:00"
    minute: int | None = Field(None, ge=0, le=59)  # hourly
    time: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # "HH:MM"
    day: str | None = Field(None, examples=list(DAYS))  # weekly: mon..sun
    timezone: str | None = None

    @classmethod
    def prepare(cls, body: Any, info: ValidationInfo) -> Any:
        if isinstance(body, dict) and isinstance(body.get("time"), int):
            raise refuse("time must be quoted, e.g. time: \"10:30\" (YAML reads 10:30 unquoted as a number)")
        context = info.context or {}
        now = context.get("now")
        try:
            # the account's timezone is filled in by Routine before this (else UTC)
            schedule = parse_schedule(None if body is _NULL else body, "UTC", now if now is not None else float("-inf"))
        except ScheduleError as exc:
            raise refuse(str(exc)) from None
        spec = dict(schedule.spec)
        if schedule.at is not None:
            spec["at"] = schedule.at.replace(tzinfo=None).isoformat(timespec="minutes")
        return spec

    @model_validator(mode="after")
    def _compile(self) -> "ScheduleTrigger":
        self.__dict__["compiled"] = parse_schedule(self.model_dump(), "UTC", float("-inf"))
        return self

    @cached_property
    def compiled(self) -> Schedule:  # always set by _compile
        raise AssertionError("validated schedules carry their compiled form")


_NULL = object()  # `github:` / `schedule:` written empty: their own check words the refusal


class Trigger(Model):
    """One trigger: exactly one of github, api, schedule."""

    null_is_empty = False
    sparse = True  # {kind: body}, as written
    github: GithubEvents | None = None
    api: ApiTrigger | None = None
    schedule: ScheduleTrigger | None = None
    model_config = {"json_schema_extra": {"minProperties": 1, "maxProperties": 1}}

    @classmethod
    def prepare(cls, trig: Any, info: ValidationInfo) -> Any:
        if not isinstance(trig, dict) or len(trig) != 1 or next(iter(trig)) not in ("github", "api", "schedule"):
            raise refuse(f"a trigger is one of github: {{…}}, api: {{}}, schedule: {{…}}, got {trig!r}")
        kind, body = next(iter(trig.items()))
        if body is None:
            body = {} if kind == "api" else _NULL
        return {kind: body}

    @property
    def kind(self) -> str:
        return "github" if self.github is not None else "api" if self.api is not None else "schedule"
