"""Model usage: the one record the gateway meters per session, and the daily totals per
routine and per account that /api/usage, the usage page and daily budgets read.

The session's record is the `usage` field of its hash (JSON, rewritten after every metered
response); each response also adds to two daily hashes (the account's calendar day in its
timezone): `keys.usage_day("account", NAME, DAY)` and `keys.usage_day("routine", KEY, DAY)`, and to
the account's day split by model, `keys.usage_day(MODELS_SCOPE, NAME, DAY)` (`daily_by_model`).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import redis

from routinely.storage import keys
from routinely.records import sessions
from routinely import when

TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
DAYS_KEPT = 40
# `keys.usage_day(MODELS_SCOPE, ACCOUNT, DAY)`: the account's day split by model, fields "MODEL|requests",
# "MODEL|<token kind>", "MODEL|cost_usd", "MODEL|unpriced_requests"; same writer and TTL as the others
MODELS_SCOPE = "account-models"
UNKNOWN_MODEL = "unknown"  # a response that named no model


def empty() -> dict[str, Any]:
    return {"requests": 0, **{name: 0 for name in TOKENS}, "cost_usd": 0.0, "models": []}


def total_tokens(usage: dict[str, Any]) -> int:
    return sum(int(usage.get(name) or 0) for name in TOKENS)


def record(conn: redis.Redis, session_id: str, routine_key: str, account: str, timezone: str, now: float,
           session_total: dict[str, Any], model: str | None, delta: dict[str, Any], delta_cost: float | None) -> None:
    """Write the session's whole record and add one response's tokens to today's totals."""
    day, _ = when.calendar_day(timezone, now)
    pipe = conn.pipeline(transaction=True)
    sessions.write(pipe, session_id, usage=orjson.dumps(session_total))
    for scope, ident in (("account", account), ("routine", routine_key)):
        key = keys.usage_day(scope, ident, day)
        pipe.hincrby(key, "requests", 1)
        for name in TOKENS:
            if delta.get(name):
                pipe.hincrby(key, name, int(delta[name]))
        if delta_cost is None:
            pipe.hincrby(key, "unpriced_requests", 1)
        else:
            pipe.hincrbyfloat(key, "cost_usd", delta_cost)
        pipe.expire(key, DAYS_KEPT * keys.DAY)
    # the account's day split by model: one hash, fields "MODEL|requests", "MODEL|input_tokens", …
    by_model = keys.usage_day(MODELS_SCOPE, account, day)
    name_of = model or UNKNOWN_MODEL
    pipe.hincrby(by_model, f"{name_of}|requests", 1)
    for name in TOKENS:
        if delta.get(name):
            pipe.hincrby(by_model, f"{name_of}|{name}", int(delta[name]))
    if delta_cost is None:
        pipe.hincrby(by_model, f"{name_of}|unpriced_requests", 1)
    else:
        pipe.hincrbyfloat(by_model, f"{name_of}|cost_usd", delta_cost)
    pipe.expire(by_model, DAYS_KEPT * keys.DAY)
    label = f"{routine_key}|{model or 'unknown'}"
    for name in TOKENS:
        if delta.get(name):
            pipe.hincrby(keys.MODEL_METRICS, f"tokens|{label}|{name}", int(delta[name]))
    if delta_cost is not None:
        pipe.hincrbyfloat(keys.MODEL_METRICS, f"cost|{label}", delta_cost)
    pipe.execute()


def record_stop(conn: redis.Redis, routine_key: str, reason: str) -> None:
    """Count a session the platform stopped: `budget_exceeded` or `stalled`."""
    conn.hincrby(keys.MODEL_METRICS, f"stop|{routine_key}|{reason}", 1)


def metrics(conn: redis.Redis) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Counters for /metrics: `tokens` (labels routine, model, kind), `cost_usd` (routine, model)
    and `stops` (routine, reason), each a list of (labels, value)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {"tokens": [], "cost_usd": [], "stops": []}
    for field, value in conn.hgetall(keys.MODEL_METRICS).items():
        parts = field.decode().split("|")
        if parts[0] == "tokens" and len(parts) == 4:
            out["tokens"].append(({"routine": parts[1], "model": parts[2], "kind": parts[3]}, float(value)))
        elif parts[0] == "cost" and len(parts) == 3:
            out["cost_usd"].append(({"routine": parts[1], "model": parts[2]}, float(value)))
        elif parts[0] == "stop" and len(parts) == 3:
            out["stops"].append(({"routine": parts[1], "reason": parts[2]}, float(value)))
    return out


def daily(conn: redis.Redis, scope: str, ident: str, timezone: str, now: float, days: int = 30) -> list[dict[str, Any]]:
    """Totals per calendar day, newest first, for `scope` "account" or "routine" (for /api/usage)."""
    today = datetime.fromtimestamp(now, ZoneInfo(timezone)).date()
    dates = [(today - timedelta(days=i)).isoformat() for i in range(days)]
    pipe = conn.pipeline(transaction=False)
    for day in dates:
        pipe.hgetall(keys.usage_day(scope, ident, day))
    return [{"date": day, **_totals(raw)} for day, raw in zip(dates, pipe.execute())]


def spent_today(conn: redis.Redis, account: str, timezone: str, now: float) -> float:
    day, _ = when.calendar_day(timezone, now)
    return float(conn.hget(keys.usage_day("account", account, day), "cost_usd") or 0)


def over_daily_budget(conn: redis.Redis, account: str, timezone: str, daily_budget_usd: float | None,
                      now: float) -> int | None:
    """Seconds until the account's day ends when it has spent its daily budget, else None
    (admission makes the same comparison inside the start script: routinely.firing.admission)."""
    if daily_budget_usd is None or spent_today(conn, account, timezone, now) < daily_budget_usd:
        return None
    return when.calendar_day(timezone, now)[1]


def _totals(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": int(raw.get(b"requests", 0))}
    out.update({name: int(raw.get(name.encode(), 0)) for name in TOKENS})
    out["cost_usd"] = round(float(raw.get(b"cost_usd", 0)), 9)
    out["unpriced_requests"] = int(raw.get(b"unpriced_requests", 0))
    return out


def add(total: dict[str, Any], model: str | None, delta: dict[str, Any], cost: float | None) -> dict[str, Any]:
    """The session's record with one more response counted; cost turns null once a model has no price."""
    out = dict(total)
    out["requests"] += 1
    for name in TOKENS:
        out[name] += int(delta.get(name) or 0)
    if model and model not in out["models"]:
        out["models"] = [*out["models"], model]
    out["cost_usd"] = None if cost is None or out["cost_usd"] is None else round(out["cost_usd"] + cost, 9)
    return out



def totals_of(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """One daily hash (`usage_day("account"|"routine", …)`) as numbers: requests, each token kind,
    cost_usd (of the priced requests) and unpriced_requests."""
    return _totals(raw)


def split_by_model(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """One `usage_day(MODELS_SCOPE, …)` hash as {model: totals} (the shape `totals_of` gives)."""
    fields: dict[str, dict[bytes, bytes]] = {}
    for field, value in raw.items():
        model, _, name = field.decode().rpartition("|")  # a model name may hold "|"; a field name never does
        fields.setdefault(model, {})[name.encode()] = value
    return {model: _totals(f) for model, f in fields.items()}
