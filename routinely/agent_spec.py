"""The routine file's fields about the agent and its spending: `agent`, `budget`,
`idle_timeout_minutes`, and the account's `daily_budget_usd` (validated whole, one line per error)."""
from __future__ import annotations

import re
from typing import Any, Callable

PRESET_NAMES = ("claude", "codex", "gemini")  # workers.agents.PRESETS holds their data
ROUTINE_KEYS = {"agent", "budget", "idle_timeout_minutes"}
ACCOUNT_KEYS = {"daily_budget_usd"}
DEFAULT_IDLE_MINUTES = 10
_MODEL = re.compile(r"^[A-Za-z0-9._:@/\[\]-]{1,128}$")

Err = Callable[[str, str], Exception]


def routine_fields(raw: dict[str, Any], where: str, err: Err) -> dict[str, Any]:
    """The normalized `agent`, `budget` and `idle_timeout_minutes` of one routine."""
    return {"agent": _agent(raw.get("agent"), where, err), "budget": _budget(raw.get("budget"), where, err),
            "idle_timeout_minutes": _number(raw.get("idle_timeout_minutes", DEFAULT_IDLE_MINUTES), where, err,
                                            "idle_timeout_minutes", 0.05, 24 * 60)}


def account_fields(raw: dict[str, Any], where: str, err: Err) -> dict[str, Any]:
    value = raw.get("daily_budget_usd")
    return {"daily_budget_usd": None if value is None else _number(value, where, err, "daily_budget_usd", 0, 1e9)}


def _agent(value: Any, where: str, err: Err) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value or set(value) - {"preset", "model", "command"}:
        raise err(where, f"agent takes {{preset: {'|'.join(PRESET_NAMES)}, model: NAME}} or {{command: \"...\"}}, got {value!r}")
    if "command" in value:
        if set(value) != {"command"} or not isinstance(value["command"], str) or not value["command"].strip():
            raise err(where, "agent.command must be a shell command (a string), alone")
        return {"command": value["command"]}
    preset = value.get("preset")
    if preset not in PRESET_NAMES:
        raise err(where, f"agent.preset must be one of {', '.join(PRESET_NAMES)}, got {preset!r}")
    model = value.get("model")
    if model is not None and not (isinstance(model, str) and _MODEL.match(model)):
        raise err(where, f"agent.model must be a model name such as claude-sonnet-4-5, got {model!r}")
    return {"preset": preset, "model": model}


def _budget(value: Any, where: str, err: Err) -> dict[str, Any]:
    if value is None:
        return {"max_cost_usd": None, "max_tokens": None}
    if not isinstance(value, dict) or not value or set(value) - {"max_cost_usd", "max_tokens"}:
        raise err(where, f"budget takes {{max_cost_usd: DOLLARS, max_tokens: N}} (either or both), got {value!r}")
    tokens = value.get("max_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 10**12):
        raise err(where, f"budget.max_tokens takes a whole number of tokens from 1, got {tokens!r}")
    cost = value.get("max_cost_usd")
    return {"max_cost_usd": None if cost is None else _number(cost, where, err, "budget.max_cost_usd", 0.0001, 1e9),
            "max_tokens": tokens}


def _number(value: Any, where: str, err: Err, name: str, lo: float, hi: float) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise err(where, f"{name} takes a number from {lo:g} to {hi:g}, got {value!r}")
    return value
