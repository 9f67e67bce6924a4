"""Replay: route a recorded event again, through the one start step like any firing.

`replay` reads the event record (routinely.records.events) and makes a new firing of the same kind
from it: a github delivery is decoded again from its kept payload (keys.payload: kept for
events that made a session, and — routinely.firing.deliveries.keep_payload — for those that were
dropped or skipped) and routed by routinely.firing.gate against the current configuration; an
api, schedule or manual firing fires the routine it was for, with its text. It goes
through `Starter.fire` (admission, session records, jobs, the event record: one atomic
step), claims no delivery id or scheduled run, and changes no installation. The new
event and its sessions carry `trigger.replay_of` (the event replayed) and, when an admin
forced it, `trigger.forced`.

`force` lifts admission for the replayed routines only: the start step is given a view of
the catalog in which their windows, the account's daily cap and budget cannot be reached.
The counters still count the run (a forced run is a run of that day), and the event and
sessions say it was forced.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from filters import EVENT_KINDS
from routinely.records import events
from routinely.firing import gate
from routinely.storage import keys
from routinely.routines.catalog import Catalog, CatalogCache
from routinely.config import Settings
from routinely.firing.deliveries import decode, keep_payload
from routinely.routine_file import Routine
from routinely.firing.start import Firing, Outcome, Routed, Starter

UNREACHABLE = 1_000_000_000  # a window or cap a forced replay cannot reach


class ReplayRefused(Exception):
    """Nothing was replayed (and nothing recorded); str() is the one line, `status` 404 or 409."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Replay(Firing):
    """A firing made again from a recorded event: its trigger names the event it replays."""

    replay_of: str | None = None
    forced: bool = False

    def trigger(self) -> dict[str, Any]:
        out = super().trigger()
        out["replay_of"] = self.replay_of
        if self.forced:
            out["forced"] = True
        return out


class _Limit:
    """A rate limit out of reach, keeping the real window length (so the real counter counts)."""

    def __init__(self, limit: Any) -> None:
        self.events = UNREACHABLE
        self.per_seconds = limit.per_seconds if hasattr(limit, "per_seconds") else limit["per_seconds"]

    def __getitem__(self, name: str) -> int:
        return getattr(self, name)


class _Lifted:
    """A routine or account as the start step reads it, but with its admission limits out of reach."""

    def __init__(self, inner: Any, **over: Any) -> None:
        self._inner, self._over = inner, over

    def __getattr__(self, name: str) -> Any:
        return self._over[name] if name in self._over else getattr(self._inner, name)


def _lifted(routine: Routine) -> Routine:
    return _Lifted(routine, rate_limit=_Limit(routine.rate_limit))  # type: ignore[return-value]


class _ForcedCache(CatalogCache):
    """The process's catalog, with the named accounts' limits out of reach (force)."""

    def __init__(self, inner: CatalogCache, accounts: set[str]) -> None:
        super().__init__()
        self.inner, self.accounts = inner, accounts

    def _view(self, catalog: Catalog) -> Catalog:
        view = copy.copy(catalog)  # the same version: the start step's stale check holds as ever
        view.accounts = dict(catalog.accounts)
        for name in self.accounts & set(catalog.accounts):
            acc = catalog.accounts[name]
            view.accounts[name] = _Lifted(acc, rate_limit=_Limit(acc.rate_limit), daily_cap=UNREACHABLE,
                                          daily_budget_usd=None)
        return view

    def get(self, conn: redis.Redis) -> Catalog:
        return self._view(self.inner.get(conn))

    def current(self, conn: redis.Redis) -> Catalog:
        return self._view(self.inner.current(conn))

    def reload(self, conn: redis.Redis) -> Catalog:
        return self._view(self.inner.reload(conn))


def _as_replay(firing: Firing, event_id: str, force: bool) -> Replay:
    out = Replay(**{f.name: getattr(firing, f.name) for f in dataclasses.fields(Firing)}, replay_of=event_id, forced=force)
    out.claim, out.installations = None, []  # no delivery id or scheduled run is claimed again
    return out


def _only(routine: str | None, routines: list[Routine]) -> list[Routine]:
    if routine is None:
        return routines
    return [r for r in routines if routine in (r.key, r.name)]


def replay(settings: Settings, conn: redis.Redis, ref: str, routine: str | None = None, force: bool = False,
           starter: Starter | None = None) -> dict[str, Any]:
    """Route event `ref` (an event or delivery id) again; `routine` (a name or ACCOUNT/NAME)
    keeps only that routine. Returns {event, replay_of, forced, sessions, dropped, skipped}:
    durable when it returns, a recorded event like any firing's. Raises ReplayRefused (404:
    no such event; 409: its payload is gone, the routine is gone or does not match it now)
    before anything is recorded, and redis.RedisError when Redis fails."""
    raw = events.find(conn, ref)
    if raw is None:
        raise ReplayRefused(f"no event or delivery {ref!r} (events are kept 7 days): GET /api/events lists them", 404)
    event_id = raw["id"]
    trigger = raw.get("trigger") or {}
    starter = starter or Starter(conn, settings)
    if raw.get("kind") == "github":
        firing, route, accounts = _github(settings, conn, raw, routine, starter, force)
    else:
        firing, route, accounts = _named(raw, trigger, routine, starter, conn, force)
    if force:
        starter = Starter(conn, settings, _ForcedCache(starter.cache, accounts))
        plain = route
        route = lambda cat: _force(plain(cat))  # noqa: E731
    outcome: Outcome = starter.fire(firing, route)
    keep_payload(conn, firing, outcome)  # a replay dropped again can be replayed again
    return {"event": outcome.event_id, "replay_of": event_id, "forced": force, "sessions": outcome.sessions,
            "dropped": outcome.dropped, "skipped": outcome.skipped}


def _force(routed: Routed | list[Routine]) -> Routed:
    if not isinstance(routed, Routed):
        routed = Routed(routed)
    return Routed([_lifted(r) for r in routed.routines], routed.refused, routed.chain_depth, routed.role_checks)


def _github(settings: Settings, conn: redis.Redis, raw: dict[str, Any], routine: str | None,
            starter: Starter, force: bool):
    name, delivery, repo = raw.get("event") or "", raw.get("delivery") or "", raw.get("repository")
    kind, _, action = name.partition(".")
    body = conn.get(keys.payload(raw["id"]))
    if body is None:
        raise ReplayRefused(f"event {raw['id']}'s payload was not kept (only events that matched a routine keep it, "
                            "7 days): redeliver it from the App's Advanced settings instead")
    payload = orjson.loads(body)
    firing = _as_replay(decode(kind, delivery, payload, body), raw["id"], force)
    if kind not in EVENT_KINDS or not repo:
        raise ReplayRefused(f"event {raw['id']} ({name or 'unnamed'}) is not one routines start on")
    catalog = starter.cache.current(conn)
    matched = _only(routine, [r for r, _ in catalog.matches(kind, action or None, repo, payload)])
    if routine is not None and not matched:
        raise ReplayRefused(f"routine {routine!r} does not match event {raw['id']} now: "
                            f"`routinely explain {raw['id']}` says why")

    def route(cat: Catalog) -> Routed:
        firing.filter_fields = {}
        routed = gate.route(cat, conn, settings, kind, action or None, repo, payload, firing.filter_fields)
        return Routed(_only(routine, routed.routines),
                      [r for r in routed.refused if routine is None or routine in (r.routine.key, r.routine.name)],
                      routed.chain_depth, routed.role_checks)

    return firing, route, {r.account for r in matched}


def _named(raw: dict[str, Any], trigger: dict[str, Any], routine: str | None, starter: Starter, conn: redis.Redis,
           force: bool):
    key = raw.get("routine")
    if not key:
        raise ReplayRefused(f"event {raw['id']} names no routine to fire again")
    if routine is not None and routine not in (key, key.partition("/")[2]):
        raise ReplayRefused(f"event {raw['id']} was for {key}, not {routine}")
    found = starter.cache.current(conn).routines.get(key)
    if found is None:
        raise ReplayRefused(f"routine {key} no longer exists", 409)
    firing = _as_replay(Firing(kind=raw.get("kind") or "manual", routine=key, text=trigger.get("text"),
                               scheduled_for=trigger.get("scheduled_for"), previous_run_at=trigger.get("previous_run_at")),
                        raw["id"], force)

    def route(cat: Catalog) -> list[Routine]:
        found_now = cat.routines.get(key)
        return [found_now] if found_now is not None else []

    return firing, route, {found.account}
