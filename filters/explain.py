"""Why a delivery did not fire a routine: the first condition that failed, in words.

Pure, like the rest of `filters/`: it asks the compiled filters themselves
(`first_failing`, `wants_event`), so the explanation cannot drift from routing; this
module only puts the failed condition and the payload's value into a sentence such as
`title: "Fix login" does not match regex ".*hotfix.*"`.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

import orjson

from filters.command import parse as parse_command
from filters.compiled import Filter, first_failing, wants_event
from filters.fields import FIELDS, LIST

MAX_SHOWN = 80  # characters of a value shown (a PR body can be long)

# op -> (words when the test does not hold, words when it holds)
_VERBS = {
    "equals": ("does not equal", "equals"),
    "contains": ("does not contain", "contains"),
    "starts_with": ("does not start with", "starts with"),
    "is_one_of": ("is not one of", "is one of"),
    "is_not_one_of": ("is one of", "is not one of"),
    "matches_regex": ("does not match regex", "matches regex"),
}


class Trigger(Protocol):
    events: Sequence[str]
    filters: Sequence[Filter]
    command: str | None


def show(value: Any) -> str:
    """A value as it would be written in JSON, cut to MAX_SHOWN characters."""
    if isinstance(value, str) and len(value) > MAX_SHOWN:
        value = value[: MAX_SHOWN - 1] + "…"
    text = orjson.dumps(value).decode()
    if isinstance(value, list):
        text = text.replace('","', '", "')
    return text


def _is_list(f: Filter) -> bool:
    return any(FIELDS[kind][f.field][0] == LIST for kind in f.kinds)


def describe(f: Filter, value: Any) -> str:
    """The sentence for a filter that did not hold on `value` (the payload's field)."""
    op, operand = f.spec["op"], f.spec["value"]
    negate, ignore_case = f.spec.get("negate", False), f.spec.get("ignore_case", False)
    failed, held = _VERBS[op]
    target = show(operand)
    if _is_list(f):
        # on a list an operator holds when it holds for one item; negate: for none
        text = f"{f.field}: {show(value)} has {'one' if negate else 'none'} that {held} {target}"
    else:
        text = f"{f.field}: {show(value)} {held if negate else failed} {target}"
    if ignore_case:
        text += " (ignoring case)"
    if negate:
        text += " (negate: true)"
    return text


def missing_event(event: str, events: Iterable[str]) -> str:
    return f"event {event} not in [{', '.join(events)}]"


def missing_repository(repository: str, repositories: Iterable[str]) -> str:
    return f"repository {repository} not in routine's repositories [{', '.join(repositories)}]"


def trigger_miss(trigger: Trigger, event: str, fields: dict[str, Any], cut: int | None = None) -> str | None:
    """Why one github trigger did not take this event, or None when it did.

    `fields` are the filter fields recorded with the delivery; a field the trigger reads
    but the record lacks (its filters changed since the delivery) is said so, not guessed.
    Strings recorded at `cut` characters were cut there: the sentence then says so.
    """
    kind = event.partition(".")[0]
    if not wants_event(trigger.events, kind, event):
        return missing_event(event, trigger.events)
    command = getattr(trigger, "command", None)
    if command:
        if "body" not in fields:
            return "field body was not recorded with this delivery (the routine's triggers changed since it arrived)"
        found = parse_command(fields["body"])
        if found is None:
            return f"body: {show(fields['body'])} does not start with the command /{command}"
        if found[0] != command:
            return f"command /{found[0]} is not /{command}"
    try:
        failing = first_failing(trigger.filters, fields, kind)
    except KeyError as exc:
        return f"field {exc.args[0]} was not recorded with this delivery (the routine's filters changed since it arrived)"
    if failing is None:
        return None
    value = fields[failing.field]
    text = describe(failing, value)
    if cut is not None and any(isinstance(v, str) and len(v) >= cut for v in (value if isinstance(value, list) else [value])):
        text += f" (recorded cut at {cut} characters: the rest was not kept)"
    return text


def routine_misses(repositories: Sequence[str], triggers: Sequence[Trigger], event: str, repository: str | None,
                   fields: dict[str, Any], cut: int | None = None) -> list[str]:
    """Per github trigger, the first condition that failed; [] when the routine would fire."""
    if not triggers:
        return ["the routine has no github trigger"]
    if repository is None or repository.lower() not in {r.lower() for r in repositories}:
        return [missing_repository(repository or "(none)", repositories)]
    misses = []
    for trigger in triggers:
        miss = trigger_miss(trigger, event, fields, cut)
        if miss is None:
            return []
        misses.append(miss)
    return misses


def condition(spec: dict[str, Any]) -> str:
    """A filter spec as the words of its condition: `labels has one that is one of ["hotfix"]`."""
    field, op, value = spec["field"], spec["op"], spec["value"]
    held = _VERBS.get(op, (op, op))[1]
    text = f"{field} {held} {show(value)}"
    if spec.get("ignore_case"):
        text += " (ignoring case)"
    return f"not ({text})" if spec.get("negate") else text
