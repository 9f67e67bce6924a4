"""Routines as the API and `routinely list` show them, with what admission dropped."""
from __future__ import annotations

from typing import Any

import redis

from routinely import keys
from routinely.admission import REASONS
from routinely.catalog import Catalog
from routinely.start import iso


def drops(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {reason: int(raw.get(reason.encode(), 0)) for reason in REASONS}
    if raw.get(b"last_at"):
        out["last_at"] = raw[b"last_at"].decode()
        out["last_reason"] = raw[b"last_reason"].decode()
        out["retry_at"] = iso(int(raw[b"retry_at_ms"]) / 1000)
    return out


def listing(conn: redis.Redis, catalog: Catalog) -> list[dict[str, Any]]:
    routines = list(catalog.routines.values())
    pipe = conn.pipeline(transaction=False)
    for routine in routines:
        pipe.hgetall(keys.drops(routine.key))
    rows = []
    for routine, raw in zip(routines, pipe.execute()):
        rows.append({
            "name": routine.name,
            "account": routine.account,
            "repositories": routine.repositories,
            "triggers": [next(iter(t)) for t in routine.spec["triggers"]],
            "paused": routine.paused,
            "rate_limit": routine.rate_limit,
            "drops": drops(raw),
        })
    return rows
