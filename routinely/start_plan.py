"""The start plan: everything one firing may write, worked out in Python before Redis sees it.

`build` is pure (no Redis, no clock of its own): the claim, each matched routine's
admission windows (routinely.admission), its session record and RQ job, the event record
and the installation changes. start.lua only applies a plan, atomically: it checks the
configuration version and the claim, applies `admission.decide` to the counters, and
writes what the plan says for each admitted session. `encode` lays a plan out as the
script's KEYS (every key it touches, declared) and flat ARGV (no JSON to decode in Lua).

Layout (start.lua reads it by these positions; record field names are the script's, so
every argument is a value — each costs Redis ~1k instructions to parse and Python to pack):
  KEYS  1 version  2 event  3 events index  4 sessions index  5 queue  6 queues set
        7 installations  8 claim (or the event key, unused)  9 payload (or the event key)
        then per session, 8 keys: routine window, account window, daily cap, drops,
        session, the routine's sessions index (keys.sessions_of(ROUTINE KEY): per account
        and name), job, the account's model spend today (or the event key, unread, without a
        daily budget)
  ARGV  1 version  2 claim ttl (0: no claim)  3 keep payload (1/0)  4 now in ms,
        to the µs (the index score: firings a millisecond apart still list in order)
        5 now iso (received_at, created_at)  6 sessions trim ms  7 events trim ms ("": not
        this time)  8 event id  9 event ttl  10 session ttl  11 skipped (JSON)
        12 job data  13 job stamp  14 #job template fields  15 #sessions  16 #refused
        17 #installation ops  18 chain depth  19 the event record as JSON without its
        closing brace (start.lua appends the outcome)  20 trigger (JSON); then the job
        template's fields (one pre-packed routinely.wire.Segment; none when no session is
        planned), installation ops (op, repo, id) and per session PER_SESSION values (id, routine,
        3 x (max, ttl, retry_after), extra_usage, job timeout, job description, daily budget
        max (-1: none), its retry_after, routine key, account, the routine's index trim ms
        or ""); then per refused firing
        (routinely.gate: role, chain_depth) 3 values (routine, reason, detail)
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
PER_SESSION = 19  # ARGV values per session (start.lua PER_SESSION)
EVENT_OPTIONAL = ("delivery", "event", "repository", "routine")  # on the event record when the firing has them


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_trim_ms = {"sessions": keys.SESSIONS_KEPT * 1000, "events": keys.EVENTS_KEPT * 1000}


@dataclass(frozen=True)
class SessionPlan:
    """One matched, unpaused routine: the session and job made if admission lets it."""

    id: str
    routine: str  # the routine's name, as answers show it
    routine_key: str
    account: str
    checks: admission.Checks
    job_timeout: int
    job_description: str
    trim: bool = True  # trim the routine's sessions index on this firing


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
    created: str  # `now` as the records show it (received_at, created_at)
    event_id: str
    event: dict[str, Any]  # the event record but its outcome (routinely.events reads it)
    trigger: str  # JSON: what fired, on the event and on each session
    chain_depth: int
    claim: str | None  # key making the firing happen once (delivery id, scheduled run)
    claim_ttl: int
    payload: bytes  # kept at keys.payload(event_id) only when a session is made
    installations: tuple[tuple[str, ...], ...]  # ("set", repo, id) | ("del", repo)
    skipped: tuple[str, ...]  # paused routines that matched
    sessions: tuple[SessionPlan, ...]
    refused: tuple[Refused, ...] = ()
    trim: frozenset[str] = frozenset(("events", "sessions"))  # the shared indexes this firing trims

    @property
    def keeps_payload(self) -> bool:
        return bool(self.payload and self.sessions)

    def session_fields(self, s: SessionPlan) -> tuple[str, ...]:
        """The session record start.lua writes for `s`, flat (it adds `metered`)."""
        return ("id", s.id, "routine", s.routine, "routine_key", s.routine_key, "account", s.account,
                "trigger", self.trigger, "event_id", self.event_id, "status", "queued", "created_at", self.created,
                "chain_depth", str(self.chain_depth))


def _new_id(kind: str) -> str:
    return ids.session_id() if kind == "session" else ids.event_id()


def build(firing: Any, catalog: Catalog, matched: list[Routine], now: float,
          new_id: Callable[[str], str] = _new_id, refused: Iterable[Refused] = (), chain_depth: int = 1,
          trim: Callable[[str], bool] = lambda index: True) -> StartPlan:
    """The plan for `firing` (routinely.start.Firing) routed to `matched` at `now`; `refused`
    and `chain_depth` come from routinely.gate (github firings; others start chains at 1);
    `trim(index)` says whether this firing trims a listing index to its window: "events",
    "sessions", or "routine:NAME" (routinely.start: each at most once a second)."""
    event_id = new_id("event")
    sessions = []
    for routine in matched:
        if routine.paused:
            continue
        sessions.append(SessionPlan(
            id=new_id("session"),
            routine=routine.name,
            routine_key=routine.key,
            account=routine.account,
            checks=admission.checks(routine, catalog.accounts[routine.account], now),
            job_timeout=int(routine.spec["timeout_minutes"] * 60) + JOB_MARGIN_SECONDS,
            job_description=f"{routine.key} {firing.kind}",
            # the per-process "trimmed lately" mark stays by name (routinely.start keeps it so): a
            # name two accounts share delays one of their trims by at most a second
            trim=trim("routine:" + routine.name),
        ))
    created = iso(now)
    trigger = firing.trigger()
    event: dict[str, Any] = {"id": event_id, "kind": firing.kind, "received_at": created, "trigger": trigger}
    for name in EVENT_OPTIONAL:
        value = getattr(firing, name)
        if value is not None:
            event[name] = value
    if firing.filter_fields:
        event["filter_fields"] = firing.filter_fields
    return StartPlan(
        version=catalog.version,
        now=now,
        created=created,
        event_id=event_id,
        event=event,
        trigger=orjson.dumps(trigger).decode(),
        chain_depth=chain_depth,
        claim=firing.claim,
        claim_ttl=firing.claim_ttl,
        payload=firing.payload,
        installations=tuple(tuple(op) for op in firing.installations),
        skipped=tuple(r.name for r in matched if r.paused),
        sessions=tuple(sessions),
        refused=tuple(refused),
        trim=frozenset(index for index in ("events", "sessions") if trim(index)),
    )


def encode(plan: StartPlan, job: jobs.JobTemplate, queue_name: str) -> tuple[list[str], list[Any]]:
    """The plan as start.lua's KEYS and ARGV (see the layout above); the payload is not
    among them: routinely.start SETs it in the same MULTI (through Lua it would cost Redis
    ~15x more: the script's strings are hashed whole)."""
    event_key = keys.event(plan.event_id)
    now_ms = int(plan.now * 1000)
    kv = [keys.ROUTINES_VERSION, event_key, keys.EVENTS, keys.SESSIONS, jobs.queue_key(queue_name), jobs.QUEUES_KEY,
          keys.INSTALLATIONS, plan.claim or event_key, keys.payload(plan.event_id) if plan.keeps_payload else event_key]
    argv: list[Any] = [
        plan.version, plan.claim_ttl if plan.claim else 0, 1 if plan.keeps_payload else 0,
        f"{plan.now * 1000:.3f}", plan.created,
        now_ms - _trim_ms["sessions"] if "sessions" in plan.trim else "",
        now_ms - _trim_ms["events"] if "events" in plan.trim else "",
        plan.event_id, keys.EVENT_TTL, keys.SESSION_TTL, orjson.dumps(plan.skipped).decode() if plan.skipped else "[]",
        job.data if plan.sessions else "", jobs.stamp(plan.now), job.packed.count if plan.sessions else 0,
        len(plan.sessions), len(plan.refused), len(plan.installations), plan.chain_depth,
        orjson.dumps(plan.event)[:-1], plan.trigger,
    ]
    if plan.sessions:
        argv.append(job.packed)
    for op in plan.installations:
        argv += [op[0], op[1], op[2] if len(op) > 2 else ""]
    for s in plan.sessions:
        c = s.checks
        kv += [c.routine.key, c.account.key, c.cap.key, c.drops_key, keys.session(s.id), keys.sessions_of(s.routine_key),
               jobs.job_key(s.id), c.budget.key if c.budget else event_key]
        r, a, d = c.windows
        argv += [s.id, s.routine, r.max, r.ttl, r.retry_after, a.max, a.ttl, a.retry_after, d.max, d.ttl, d.retry_after,
                 1 if c.extra_usage else 0, s.job_timeout, s.job_description,
                 repr(c.budget.max) if c.budget else -1, c.budget.retry_after if c.budget else 0, s.routine_key, s.account,
                 now_ms - _trim_ms["sessions"] if s.trim else ""]
    for r in plan.refused:
        kv.append(keys.drops(r.routine.key))
        argv += [r.routine.name, r.reason, r.detail]
    return kv, argv
