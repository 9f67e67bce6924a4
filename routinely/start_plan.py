"""The start plan: everything one firing may write, worked out in Python before Redis sees it.

`build` is pure (no Redis, no clock of its own): the claim, each matched routine's
admission windows (routinely.admission), its session record and RQ job, the event record
and the installation changes. start.lua only applies a plan, atomically: it checks the
configuration version and the claim, applies `admission.decide` to the counters, and
writes what the plan says for each admitted session. `encode` lays a plan out as the
script's KEYS (every key it touches, declared) and flat ARGV (no JSON to decode in Lua).

Layout (start.lua reads it by these positions):
  KEYS  1 version  2 event  3 events index  4 sessions index  5 queue  6 queues set
        7 installations  8 claim (or the event key, unused)  9 payload (or the event key)
        then per session, 8 keys: routine window, account window, daily cap, drops,
        session, the routine's sessions index, job, the account's model spend today (or the
        event key, unread, without a daily budget)
  ARGV  1 version  2 claim ttl (0: no claim)  3 keep payload (1/0)  4 now in ms, to the µs
        (the index score: firings a millisecond apart still list in order)  5 now iso
        6 sessions trim ms  7 events trim ms  8 event id  9 event ttl  10 session ttl
        11 skipped (JSON)  12 job data  13 job stamp  14 #event fields  15 #job fields
        16 #installation ops  17 #sessions  18 #refused; then the event fields, the job
        template's fields, installation ops (op, repo, id) and per session 16 values (id,
        routine, 3 x (max, ttl, retry_after), extra_usage, job timeout, job description, daily
        budget max (-1: none), its retry_after) followed by #session fields and the session
        fields; then per refused firing (routinely.gate: role, chain_depth) 3 values (routine,
        reason, detail)
  KEYS  after the sessions' keys, per refused firing 1 key: the routine's drops
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import orjson

from routinely import admission, ids, jobs, keys
from routinely.catalog import Catalog
from routinely.routine_file import Routine

JOB_MARGIN_SECONDS = 600  # RQ's own timeout sits past the runner's, which ends the agent first
FIXED_KEYS = 9
KEYS_PER_SESSION = 8


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SessionPlan:
    """One matched, unpaused routine: the session and job made if admission lets it."""

    id: str
    routine: str  # the routine's name, as answers show it
    routine_key: str
    checks: admission.Checks
    fields: tuple[str, ...]  # the session hash, flat (start.lua adds `metered`)
    job_timeout: int
    job_description: str


@dataclass(frozen=True)
class Refused:
    """A matched routine that may not fire (routinely.gate): recorded as a drop, admits nothing."""

    routine: Routine
    reason: str  # role | chain_depth
    detail: str  # why, in words, for the events page


@dataclass(frozen=True)
class StartPlan:
    version: int  # the catalog version routing used; a newer one in Redis makes the plan stale
    now: float
    event_id: str
    event_fields: tuple[str, ...]  # the event record, flat (start.lua adds the outcome)
    claim: str | None  # key making the firing happen once (delivery id, scheduled run)
    claim_ttl: int
    payload: bytes  # kept at keys.payload(event_id) only when a session is made
    installations: tuple[tuple[str, ...], ...]  # ("set", repo, id) | ("del", repo)
    skipped: tuple[str, ...]  # paused routines that matched
    sessions: tuple[SessionPlan, ...]
    refused: tuple[Refused, ...] = ()

    @property
    def keeps_payload(self) -> bool:
        return bool(self.payload and self.sessions)


def _new_id(kind: str) -> str:
    return ids.session_id() if kind == "session" else ids.event_id()


def build(firing: Any, catalog: Catalog, matched: list[Routine], now: float,
          new_id: Callable[[str], str] = _new_id, refused: Iterable[Refused] = (), chain_depth: int = 1) -> StartPlan:
    """The plan for `firing` (routinely.start.Firing) routed to `matched` at `now`; `refused`
    and `chain_depth` come from routinely.gate (github firings; others start chains at 1)."""
    event_id = new_id("event")
    created = iso(now)
    trigger = orjson.dumps(firing.trigger()).decode()
    sessions = []
    for routine in matched:
        if routine.paused:
            continue
        sid = new_id("session")
        sessions.append(SessionPlan(
            id=sid,
            routine=routine.name,
            routine_key=routine.key,
            checks=admission.checks(routine, catalog.accounts[routine.account], now),
            fields=("id", sid, "routine", routine.name, "routine_key", routine.key, "account", routine.account,
                    "trigger", trigger, "event_id", event_id, "status", "queued", "created_at", created,
                    "chain_depth", str(chain_depth)),
            job_timeout=int(routine.spec["timeout_minutes"] * 60) + JOB_MARGIN_SECONDS,
            job_description=f"{routine.key} {firing.kind}",
        ))
    event_fields = ["id", event_id, "kind", firing.kind, "received_at", created, "trigger", trigger]
    for name in ("delivery", "event", "repository", "routine"):
        value = getattr(firing, name)
        if value is not None:
            event_fields += [name, value]
    if firing.filter_fields:
        event_fields += ["filter_fields", orjson.dumps(firing.filter_fields).decode()]
    return StartPlan(
        version=catalog.version,
        now=now,
        event_id=event_id,
        event_fields=tuple(event_fields),
        claim=firing.claim,
        claim_ttl=firing.claim_ttl,
        payload=firing.payload,
        installations=tuple(tuple(op) for op in firing.installations),
        skipped=tuple(r.name for r in matched if r.paused),
        sessions=tuple(sessions),
        refused=tuple(refused),
    )


def encode(plan: StartPlan, job: jobs.JobTemplate, queue_name: str) -> tuple[list[str], list[Any]]:
    """The plan as start.lua's KEYS and ARGV (see the layout above); the job template's
    fields stay one pre-packed routinely.wire.Segment."""
    event_key = keys.event(plan.event_id)
    now_ms = int(plan.now * 1000)
    kv = [keys.ROUTINES_VERSION, event_key, keys.EVENTS, keys.SESSIONS, jobs.queue_key(queue_name), jobs.QUEUES_KEY,
          keys.INSTALLATIONS, plan.claim or event_key, keys.payload(plan.event_id) if plan.keeps_payload else event_key]
    ops: list[str] = []
    for op in plan.installations:
        ops += [op[0], op[1], op[2] if len(op) > 2 else ""]
    argv: list[Any] = [
        plan.version, plan.claim_ttl if plan.claim else 0, 1 if plan.keeps_payload else 0, f"{plan.now * 1000:.3f}",
        iso(plan.now),
        now_ms - keys.SESSIONS_KEPT * 1000, now_ms - keys.EVENTS_KEPT * 1000, plan.event_id, keys.EVENT_TTL,
        keys.SESSION_TTL, orjson.dumps(plan.skipped).decode(), job.data, jobs.stamp(plan.now),
        len(plan.event_fields), job.packed.count, len(plan.installations), len(plan.sessions), len(plan.refused),
        *plan.event_fields, job.packed, *ops,
    ]
    for s in plan.sessions:
        c = s.checks
        kv += [c.routine.key, c.account.key, c.cap.key, c.drops_key, keys.session(s.id), keys.sessions_of(s.routine),
               jobs.job_key(s.id), c.budget.key if c.budget else event_key]
        argv += [s.id, s.routine]
        for w in c.windows:
            argv += [w.max, w.ttl, w.retry_after]
        argv += [1 if c.extra_usage else 0, s.job_timeout, s.job_description,
                 repr(c.budget.max) if c.budget else -1, c.budget.retry_after if c.budget else 0, len(s.fields), *s.fields]
    for r in plan.refused:
        kv.append(keys.drops(r.routine.key))
        argv += [r.routine.name, r.reason, r.detail]
    return kv, argv
