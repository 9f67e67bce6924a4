"""The routine file's building blocks: a strict base model, and field checks that say in
one line what a field takes (routinely.routine_file.errors puts where in front).

A field is one declaration: `paused: Annotated[bool, flag("paused")] = False`.
"""
from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationInfo, \
    model_serializer, model_validator
from pydantic_core import core_schema

from routinely.routine_file.errors import refuse


class Model(BaseModel):
    """A block of the file: unknown keys are refused naming the allowed ones; a value that is
    not a mapping gets `shape` as its message; null takes the block's defaults unless
    `null_is_empty` is off; a required key left out is checked as null, so its own check
    words the refusal. `sparse` blocks leave unset (None) keys out when dumped, as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: ClassVar[str] = "must be a mapping"
    null_is_empty: ClassVar[bool] = True
    sparse: ClassVar[bool] = False

    @model_validator(mode="wrap")
    @classmethod
    def _block(cls, data: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        if isinstance(data, cls):
            return data
        return handler(cls.prepare(data, info))

    @classmethod
    def prepare(cls, data: Any, info: ValidationInfo) -> Any:
        """The raw block before its fields are validated; raise `refuse(...)` to refuse it."""
        if data is None and cls.null_is_empty:
            data = {}
        if not isinstance(data, dict):
            raise refuse(cls.shape)
        keys = cls.keys()
        unknown = set(data) - set(keys)
        if unknown:
            raise refuse(f"unknown key(s) {sorted(unknown, key=str)}; allowed: {', '.join(sorted(keys))}", block=True)
        missing = [k for k, required in keys.items() if required and k not in data]
        return {**data, **dict.fromkeys(missing)} if missing else data

    @classmethod
    def keys(cls) -> dict[str, bool]:
        """The block's keys as the file spells them, and whether each is required."""
        return {f.alias or name: f.is_required() for name, f in cls.model_fields.items()}

    @model_serializer(mode="wrap")
    def _dump(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None} if self.sparse else data

    def to_file(self) -> dict[str, Any]:
        """The block in the file's shape and JSON types (defaults filled in): what is stored."""
        return self.model_dump(mode="json", by_alias=True)


@dataclass(frozen=True)
class Checked:
    """Field metadata: `check` sees the raw value first (a refusal is the message; it may
    also normalize); `schema` adds JSON Schema keywords for editors."""

    check: Callable[[Any], Any]
    schema: dict[str, Any] = field(default_factory=dict)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = handler(schema)
        out.update(self.schema)
        return out


def flag(name: str) -> Checked:
    """true or false, nothing YAML or pydantic would read as one ("no", 0)."""
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise refuse(f"{name} takes true or false, got {value!r}")
        return value
    return Checked(check)


SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # as `routinely secret set NAME` takes it


def secret_names(name: str) -> Checked:
    """A list of distinct secret names (letters, digits and _, not first a digit)."""
    def check(value: Any) -> list[str]:
        value = [] if value is None else value
        if not isinstance(value, list) or not all(isinstance(v, str) and SECRET_NAME.fullmatch(v) for v in value) \
                or len(set(value)) != len(value):
            raise refuse(f"{name} must be a list of distinct secret names (letters, digits and _, not first a digit), "
                         f"e.g. [SENTRY_TOKEN], got {value!r}")
        return value
    return Checked(check, {"items": {"type": "string", "pattern": f"^{SECRET_NAME.pattern}$"}, "uniqueItems": True})


def whole(name: str, lo: int, hi: int, words: str | None = None) -> Checked:
    """A whole number from `lo` to `hi`."""
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise refuse(words.format(value=value) if words else f"{name} takes a whole number from {lo} to {hi}, got {value!r}")
        return value
    return Checked(check, {"minimum": lo, "maximum": hi})


def number(name: str, lo: float, hi: float, words: str | None = None, optional: bool = False) -> Checked:
    """A number (whole or not) from `lo` to `hi`; None passes when `optional`."""
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise refuse(words.format(value=value) if words else f"{name} takes a number from {lo:g} to {hi:g}, got {value!r}")
        return value
    return Checked(check, {"minimum": lo, "maximum": hi})


def script(message: str) -> Checked:
    """A shell script (a string), or nothing."""
    def check(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise refuse(message)
        return value
    return Checked(check)


def null_is(default: Any) -> Checked:
    """null (or a left-out key) takes `default`."""
    return Checked(lambda value: default if value is None else value)
