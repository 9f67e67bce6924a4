"""Compile filter specs once (at apply time) into predicates over extracted fields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import re2

from filters.fields import AUTHOR_ASSOCIATIONS, BOOL, FIELDS, LIST
from filters.operators import OPERATORS, compile_regex

_KEYS = {"field", "op", "value", "ignore_case", "negate"}


class FilterError(ValueError):
    """A filter spec that cannot be compiled; the message says what to change."""


@dataclass(frozen=True)
class Filter:
    field: str
    spec: dict[str, Any]
    predicate: Callable[[Any], bool]
    kinds: frozenset[str]  # event kinds that have the field; others are not filtered by it

    def matches(self, fields: dict[str, Any]) -> bool:
        return self.predicate(fields[self.field])

    def applies(self, kind: str) -> bool:
        """Whether events of this kind are filtered by it (a base_branch filter skips releases)."""
        return kind in self.kinds


def _fail(msg: str) -> FilterError:
    return FilterError(msg)


def _string_list(value: Any, op: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(f"op {op} takes a non-empty list of strings as value, got {value!r}")
    return value


def compile_filter(spec: Any, kinds: Iterable[str]) -> Filter:
    """Compile one filter for a trigger on the event kinds `kinds`.

    The field must exist for at least one of them; events of a kind without it (a
    base_branch filter on a release) are not filtered by it. Raises FilterError naming the
    unknown field/operator, wrong value type or bad pattern.
    """
    if not isinstance(spec, dict):
        raise _fail(f"a filter is a mapping like {{field: title, op: equals, value: x}}, got {spec!r}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise _fail(f"unknown key(s) {sorted(unknown)}; a filter takes {sorted(_KEYS)}")
    field, op = spec.get("field"), spec.get("op")
    kinds = sorted(kinds)
    having = frozenset(kind for kind in kinds if field in FIELDS[kind])
    if not having:
        known = sorted({name for kind in kinds for name in FIELDS[kind]})
        raise _fail(f"field {field!r} is unknown for {' and '.join(kinds)} events; known: {', '.join(known)}")
    types = {FIELDS[kind][field][0] for kind in having}
    if op not in OPERATORS:
        raise _fail(f"op {op!r} is unknown; known: {', '.join(OPERATORS)}")
    if "value" not in spec:
        raise _fail("value is missing")
    ignore_case, negate = spec.get("ignore_case", False), spec.get("negate", False)
    for flag, name in ((ignore_case, "ignore_case"), (negate, "negate")):
        if not isinstance(flag, bool):
            raise _fail(f"{name} takes true or false, got {flag!r}")
    value = spec["value"]
    field_type = types.pop()  # a field has one type in every kind that has it

    if field_type == BOOL:
        if op != "equals" or not isinstance(value, bool):
            raise _fail(f"field {field} is a boolean: use op equals with value true or false")
        if ignore_case:
            raise _fail(f"ignore_case does not apply to the boolean field {field}")
        want = value
        test: Callable[[Any], bool] = lambda v: v is want
    else:
        if field == "author_association":
            _check_associations(op, value, ignore_case)
        test = _string_test(op, value, ignore_case)
        if field_type == LIST:
            one = test
            test = lambda labels: any(one(label) for label in labels)
    predicate = (lambda v: not test(v)) if negate else test
    return Filter(field=field, spec=dict(spec), predicate=predicate, kinds=having)


def _check_associations(op: str, value: Any, ignore_case: bool) -> None:
    """A misspelt association (`maintainer`, `owner`) would never match: say so when applied."""
    if OPERATORS[op][1] == "regex":
        return
    values = value if isinstance(value, list) else [value]
    known = {a.casefold() for a in AUTHOR_ASSOCIATIONS} if ignore_case else set(AUTHOR_ASSOCIATIONS)
    wrong = [v for v in values if isinstance(v, str) and (v.casefold() if ignore_case else v) not in known]
    if wrong and op in ("equals", "is_one_of", "is_not_one_of"):
        raise _fail(f"author_association is one of {', '.join(AUTHOR_ASSOCIATIONS)}; {wrong[0]!r} is not")


def _string_test(op: str, value: Any, ignore_case: bool) -> Callable[[str], bool]:
    fn, shape = OPERATORS[op]
    if shape == "string":
        if not isinstance(value, str):
            raise _fail(f"op {op} takes a string value, got {value!r}")
        if ignore_case:
            return _folded(op, [value])
        return lambda v: fn(v, value)
    if shape == "list":
        values = _string_list(value, op)
        if ignore_case:
            return _folded(op, values)
        operand = frozenset(values)
        return lambda v: fn(v, operand)
    if not isinstance(value, str):
        raise _fail(f"op matches_regex takes a pattern string, got {value!r}")
    try:
        operand = compile_regex(value, ignore_case)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return lambda v: fn(v, operand)


def _folded(op: str, values: list[str]) -> Callable[[str], bool]:
    """`ignore_case` for the literal operators, through RE2 like matches_regex: one folding
    (Unicode simple case folding) for every operator, so `K` equals the Kelvin sign `K` and
    `σ` equals `ς` everywhere, while `STRASSE` equals `straße` nowhere (no operator maps one
    character to two)."""
    pattern = compile_regex("|".join(re2.escape(v) for v in values), True)
    if op == "contains":
        return lambda v: pattern.search(v) is not None
    if op == "starts_with":
        return lambda v: pattern.match(v) is not None  # anchored at the start only
    if op == "is_not_one_of":
        return lambda v: pattern.fullmatch(v) is None
    return lambda v: pattern.fullmatch(v) is not None  # equals, is_one_of


def compile_filters(specs: Any, kinds: Iterable[str]) -> tuple[Filter, ...]:
    """Compile a list of filters; FilterError messages are prefixed with the filter's 1-based index."""
    if specs is None:
        return ()
    if not isinstance(specs, list):
        raise FilterError(f"filters must be a list, got {type(specs).__name__}")
    kinds = list(kinds)
    compiled = []
    for index, spec in enumerate(specs, start=1):
        try:
            compiled.append(compile_filter(spec, kinds))
        except FilterError as exc:
            raise FilterError(f"filter {index}: {exc}") from None
    return tuple(compiled)


def matches_all(filters: Iterable[Filter], fields: dict[str, Any], kind: str) -> bool:
    """True when every filter that applies to this event kind holds (AND); none holds."""
    return first_failing(filters, fields, kind) is None


def first_failing(filters: Iterable[Filter], fields: dict[str, Any], kind: str) -> Filter | None:
    """The first filter that applies to this kind and does not hold, or None when all hold.

    Routing and the explanation of a delivery that started nothing both ask this, so they
    cannot disagree; like AND, it reads no field past the first failure.
    """
    for f in filters:
        if f.applies(kind) and not f.matches(fields):
            return f
    return None


def wants_event(events: Iterable[str], kind: str, event: str) -> bool:
    """Whether a trigger's `events` list takes this event (`kind` alone means every action)."""
    return kind in events or event in events
