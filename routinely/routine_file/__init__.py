"""The routine file (`routinely apply FILE`): typed records, validated whole or rejected whole.

In: the file's text or mapping. Out: a `RoutineFile` of `Account`s, `Connector`s and
`Routine`s (routinely.routine_file.models), defaults filled in, filters compiled, schedules
parsed — or an `ApplyError` whose one line names the routine, the trigger, the filter and
what to change. `json_schema()` describes the same file for editors (`routinely schema`).
"""
from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from routinely.routine_file.agent import Agent, Budget
from routinely.routine_file.environment import NETWORKS, Environment, Network, SessionLimits
from routinely.routine_file.errors import ApplyError, one_line
from routinely.routine_file.models import (
    ACCOUNT_LIMIT, BUILTIN_CONNECTORS, GITHUB_WRITES, PLANS, ROUTINE_LIMIT, Account, Connector, GithubPolicy,
    RateLimit, Routine, RoutineFile,
)
from routinely.routine_file.triggers import ACTIONS, ROLES, ApiTrigger, GithubEvents, GithubTrigger, ScheduleTrigger, Trigger

__all__ = [
    "ACCOUNT_LIMIT", "ACTIONS", "BUILTIN_CONNECTORS", "GITHUB_WRITES", "NETWORKS", "PLANS", "ROLES", "ROUTINE_LIMIT",
    "Account", "Agent", "ApiTrigger", "ApplyError", "Budget", "Connector", "Environment", "GithubEvents",
    "GithubPolicy", "GithubTrigger", "Network", "RateLimit", "Routine", "RoutineFile", "ScheduleTrigger",
    "SessionLimits", "Trigger", "json_schema", "load_yaml", "parse_config", "parse_stored",
]
SCHEMA_ID = "https://routinely.dev/schema/routines.json"


def load_yaml(text: str) -> dict[str, Any]:
    """The file's mapping. Raises ApplyError for YAML that does not parse, or is not a mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ApplyError(f"the file is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ApplyError("the file must be a mapping with accounts, connectors and routines")
    return data


def parse_config(data: Any, now: float | None) -> RoutineFile:
    """Validate a routine file's mapping whole. Raises ApplyError (one line). `now` None skips
    the future-time check of `at` schedules (for configurations already stored)."""
    try:
        return RoutineFile.model_validate(data, context={"now": now})
    except ValidationError as exc:
        raise one_line(exc, data) from None


def parse_stored(raw: bytes | str) -> RoutineFile:
    """A configuration as routinely.routines.catalog stored it (JSON, defaults filled in)."""
    try:
        return RoutineFile.model_validate_json(raw, context={"now": None})
    except ValidationError as exc:
        raise one_line(exc, None) from None


def json_schema() -> dict[str, Any]:
    """The routine file's JSON Schema (draft 2020-12), made from the models: what
    `routinely schema` prints and editors validate against."""
    schema = RoutineFile.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "Routinely routine file", **{k: v for k, v in schema.items() if k != "title"}}
