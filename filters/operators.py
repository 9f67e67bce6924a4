"""Operators: each takes the field value (a string) and the prepared operand."""
from __future__ import annotations

from typing import Any, Callable

import re2

Operator = Callable[[str, Any], bool]


def _equals(value: str, operand: str) -> bool:
    return value == operand


def _contains(value: str, operand: str) -> bool:
    return operand in value


def _starts_with(value: str, operand: str) -> bool:
    return value.startswith(operand)


def _is_one_of(value: str, operand: frozenset[str]) -> bool:
    return value in operand


def _is_not_one_of(value: str, operand: frozenset[str]) -> bool:
    return value not in operand


def _matches_regex(value: str, operand: Any) -> bool:
    return operand.fullmatch(value) is not None


# name -> (operator, value shape) ; shape is "string", "list" or "regex"
OPERATORS: dict[str, tuple[Operator, str]] = {
    "equals": (_equals, "string"),
    "contains": (_contains, "string"),
    "starts_with": (_starts_with, "string"),
    "is_one_of": (_is_one_of, "list"),
    "is_not_one_of": (_is_not_one_of, "list"),
    "matches_regex": (_matches_regex, "regex"),
}


def compile_regex(pattern: str, ignore_case: bool) -> Any:
    """Compile with RE2 (linear time, no backtracking); raises ValueError with RE2's reason."""
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False  # a bad pattern is reported to the user, not to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"bad pattern {pattern!r}: {reason}") from None
