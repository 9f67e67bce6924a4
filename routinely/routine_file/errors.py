"""One line per refusal: a validation failure in the routine file's own words.

Checks raise `refuse(message)`; `one_line` puts where it happened in front (the account,
the routine, the trigger, read from the error's location and the file itself), so no
pydantic message, and never more than one line, reaches a user.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

ROUTINE_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TRIGGER_KINDS = ("github", "api", "schedule")


class ApplyError(ValueError):
    """The file cannot be applied; nothing was stored. str() names where and what."""


def refuse(message: str, *, at: str | None = None, block: bool = False, whole: bool = False) -> PydanticCustomError:
    """What a check raises. `message` is shown as it is, after where it happened; `at`
    names a place inside that (`trigger 2 (github)`), `block` names the block the error's
    location points into (unknown keys of `environment`), and `whole` says the message
    names its place itself."""
    ctx: dict[str, Any] = {"message": message}
    if at:
        ctx["at"] = at
    if block:
        ctx["block"] = True
    if whole:
        ctx["whole"] = True
    return PydanticCustomError("routine_file", "{message}", ctx)


def one_line(exc: ValidationError, data: Any) -> ApplyError:
    """The first error of `exc` (raised validating `data`) as the line to show."""
    err = exc.errors(include_url=False)[0]
    ctx = err.get("ctx") or {}
    place, rest = _place(err["loc"], data)
    if err["type"] == "routine_file":
        message = ctx["message"]
        if ctx.get("whole"):
            return ApplyError(message)
    else:  # a shape no check of ours words: pydantic's message, still one line
        message = (f"{'.'.join(map(str, rest))}: " if rest else "") + " ".join(str(err["msg"]).split())
        rest = []
    if ctx.get("block") and rest:
        place = ", ".join(filter(None, [place, ".".join(map(str, rest))]))
    if ctx.get("at"):
        place = ", ".join(filter(None, [place, ctx["at"]]))
    return ApplyError(f"{place}: {message}" if place else message)


def _item(data: Any, key: str, index: Any) -> Any:
    items = data.get(key) if isinstance(data, dict) else None
    if isinstance(items, list) and isinstance(index, int) and 0 <= index < len(items):
        return items[index]
    return None


def _place(loc: tuple[Any, ...], data: Any) -> tuple[str, list[Any]]:
    """Where `loc` points, in words (`routine 'r' (account a), trigger 2 (github)`), and the
    rest of the location below that place."""
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "accounts" and isinstance(parts[1], int):
        raw = _item(data, "accounts", parts[1])
        name = raw.get("name") if isinstance(raw, dict) else None
        ok = isinstance(name, str) and ACCOUNT_NAME.match(name)
        return (f"account {name!r}" if ok else f"account {parts[1] + 1}"), parts[2:]
    if len(parts) >= 2 and parts[0] == "routines" and isinstance(parts[1], int):
        raw = _item(data, "routines", parts[1])
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and ROUTINE_NAME.match(name):
            place = f"routine {name!r} (account {raw.get('account')})"
        else:
            place = f"routine {parts[1] + 1}"
        rest = parts[2:]
        if len(rest) >= 2 and rest[0] == "triggers" and isinstance(rest[1], int):
            place += f", trigger {rest[1] + 1}"
            rest = rest[2:]
            if rest and rest[0] in TRIGGER_KINDS:
                place += f" ({rest[0]})"
                rest = rest[1:]
        return place, rest
    if len(parts) >= 2 and parts[0] == "connectors":
        return f"connector {parts[1]!r}", parts[2:]
    return "", parts
