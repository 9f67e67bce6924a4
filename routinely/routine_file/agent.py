"""`agent:` and `budget:` — which agent a routine runs and what one session may spend."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ValidationInfo

from routinely.routines.agent_spec import PRESET_NAMES
from routinely.routine_file.errors import refuse
from routinely.routine_file.fields import Checked, Model, number

_MODEL = re.compile(r"^[A-Za-z0-9._:@/\[\]-]{1,128}$")


class Agent(Model):
    """A preset (with an optional model) or a shell command; none: ROUTINELY_AGENT."""

    sparse = True  # {command} or {preset, model}, as written
    preset: Literal[PRESET_NAMES] | None = None  # workers.agents.PRESETS holds their data
    model: str | None = None
    command: str | None = None

    @classmethod
    def prepare(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict) or not value or set(value) - {"preset", "model", "command"}:
            raise refuse(f"agent takes {{preset: {'|'.join(PRESET_NAMES)}, model: NAME}} or {{command: \"...\"}}, got {value!r}")
        if "command" in value:
            if set(value) != {"command"} or not isinstance(value["command"], str) or not value["command"].strip():
                raise refuse("agent.command must be a shell command (a string), alone")
            return value
        if value.get("preset") not in PRESET_NAMES:
            raise refuse(f"agent.preset must be one of {', '.join(PRESET_NAMES)}, got {value.get('preset')!r}")
        model = value.get("model")
        if model is not None and not (isinstance(model, str) and _MODEL.match(model)):
            raise refuse(f"agent.model must be a model name such as claude-sonnet-4-5, got {model!r}")
        return {"preset": value["preset"], "model": model}


def _tokens(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**12):
        raise refuse(f"budget.max_tokens takes a whole number of tokens from 1, got {value!r}")
    return value


class Budget(Model):
    """Per session, metered by the model gateway: past either, it refuses further requests."""

    max_cost_usd: Annotated[float | int | None, number("budget.max_cost_usd", 0.0001, 1e9, optional=True)] = None
    max_tokens: Annotated[int | None, Checked(_tokens, {"minimum": 1})] = None

    @classmethod
    def prepare(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict) or not value or set(value) - {"max_cost_usd", "max_tokens"}:
            raise refuse(f"budget takes {{max_cost_usd: DOLLARS, max_tokens: N}} (either or both), got {value!r}")
        return value
