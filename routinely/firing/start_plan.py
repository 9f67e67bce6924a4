"""The start plan: everything one firing may write, worked out in Python before Redis sees it.

`build` is pure (no Redis, no clock of its own): the claim, each matched routine's
admission windows (routinely.firing.admission), its session record and RQ job, the event record
and the installation changes. start.lua only applies a plan, atomically: it checks the
configuration version and the claim, applies the admission rule to the counters, and
writes what the plan says for each admitted session. `encode` lays a plan out as the
script's KEYS (every key it touches, declared) and flat ARGV (no JSON to decode in Lua).

The layout is declared once, below, by name: `encode` fills each slot by its name, and the
script reads it by the same name (`SCRIPT` is start.lua behind a header made from these
tables), so neither side counts positions. Record field names are the script's, so every
argument is a value (each costs Redis ~1k instructions to parse and Python to pack).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import orjson

from filters import Fields, matches_all, wants_event
from routinely.firing import admission
from routinely.storage import ids, jobs, keys
from routinely.when import iso
from routinely.routines.catalog import Catalog
from routinely.routine_file import Routine
from routinely.routine_file.concurrency import Concurrency

JOB_MARGIN_SECONDS = 600  # RQ's own timeout sits past the runner's, which ends the agent first
# -- the script's layout: KEYS, then ARGV; a block repeats per session, refused firing or
# installation change, in that order after the fixed slots
FIXED_KEY_NAMES = (
    "version", "event", "events_index", "sessions_index", "queue", "queues",
    "installations", "claim",  # the claim key (or the event key, unused)
    "payload",  # kept only when a session is made (or the event key)
    "scheduled",  # RQ's registry of scheduled jobs: sessions held by their group's debounce
)
SESSION_KEY_NAMES = (
    "routine_window", "account_window", "daily_cap",  # admission counters, in admission.REASONS order
    "drops", "session", "routine_sessions",  # keys.sessions_of(routine key): per account and name
    "job", "spend",  # the account's model spend today (or the event key, unread, without a daily budget)
    # its concurrency group (keys.concurrency_group) and the records of the group's sessions as
    # read before the script (routinely.firing.start): the one admitted to RQ, the one waiting behind it
    # (each the event key when there is none: unread)
    "group", "active_session", "active_job", "active_cancel", "waiting_session", "waiting_job",
)
REFUSED_KEY_NAMES = ("drops",)
FIXED_ARG_NAMES = (
    "version", "claim_ttl",  # 0: no claim
    "keep_payload",  # 1/0
    "score",  # now in ms, to the µs (the index score: firings a millisecond apart still list in order)
    "now_iso",  # received_at, created_at
    "sessions_trim", "events_trim",  # ms below which the index is trimmed ("": not this time)
    "event_id", "event_ttl", "session_ttl",
    "skipped",  # JSON
    "job_data", "job_stamp", "job_fields",  # the job template: its count of packed fields (after the fixed slots)
    "sessions", "refused", "installation_ops",  # how many blocks of each follow
    "chain_depth",
    "event_json",  # the event record as JSON without its closing brace (the script appends the outcome)
    "trigger",  # JSON
)
SESSION_ARG_NAMES = (
    "id", "routine",
    "routine_max", "routine_ttl", "routine_retry",  # one (max, ttl, retry_after) per window,
    "account_max", "account_ttl", "account_retry",  # in admission.REASONS order
    "cap_max", "cap_ttl", "cap_retry",
    "extra_usage", "job_timeout", "job_description",
    "budget_max",  # -1: no daily budget
    "budget_retry", "routine_key", "account",
    "routine_trim",  # ms below which the routine's index is trimmed, or ""
    "role_check",  # routinely.firing.roles.RoleCheck as JSON: the worker asks GitHub before the session runs; or ""
    "group",  # the rendered concurrency group, or "": none
    "active", "waiting",  # the group's sessions as read before ("" none): the script refuses a plan they no longer are
    "cancel_in_progress",  # 1/0
    "start_at", "start_at_iso",  # debounce: epoch s the session may start (0: at once), and as the record shows it
)
REFUSED_ARG_NAMES = ("routine", "reason", "detail")  # routinely.firing.gate: role, chain_depth
INSTALLATION_ARG_NAMES = ("op", "repo", "id")  # ("set", repo, id) | ("del", repo, "")

FIXED_KEYS = len(FIXED_KEY_NAMES)
KEYS_PER_SESSION = len(SESSION_KEY_NAMES)
PER_SESSION = len(SESSION_ARG_NAMES)


def _lua_names(prefix: str, names: tuple[str, ...], first: int) -> str:
    """`local K_version, K_event, … = 1, 2, …`: plain locals (a table would be built again on
    every call of the script)."""
    return (f"local {', '.join(f'{prefix}_{n}' for n in names)} = "
            f"{', '.join(str(i) for i in range(first, first + len(names)))}")


def lua_header() -> str:
    """The layout as Lua locals: K_name (KEYS) and A_name (ARGV) by position; KS_, AS_, KR_,
    AR_, AI_ as offsets inside a block; the blocks' sizes; REASONS as admission names them; the
    concurrency groups' lifetimes and RQ's words for a job held back (routinely.storage.keys, jobs)."""
    reasons = ", ".join(f"'{r}'" for r in admission.REASONS)
    return "\n".join([
        "-- made by routinely/firing/start_plan.py from its layout tables: every slot by name",
        _lua_names("K", FIXED_KEY_NAMES, 1), _lua_names("KS", SESSION_KEY_NAMES, 0),
        _lua_names("KR", REFUSED_KEY_NAMES, 0), _lua_names("A", FIXED_ARG_NAMES, 1),
        _lua_names("AS", SESSION_ARG_NAMES, 0), _lua_names("AR", REFUSED_ARG_NAMES, 0),
        _lua_names("AI", INSTALLATION_ARG_NAMES, 0),
        f"local N_FIXED_KEYS, KS_N, KR_N = {FIXED_KEYS}, {KEYS_PER_SESSION}, {len(REFUSED_KEY_NAMES)}",
        f"local N_FIXED_ARGS = {len(FIXED_ARG_NAMES)}",
        f"local AS_N, AR_N, AI_N = {PER_SESSION}, {len(REFUSED_ARG_NAMES)}, {len(INSTALLATION_ARG_NAMES)}",
        f"local REASONS = {{{reasons}}}",
        f"local GROUP_TTL, CANCEL_TTL = {keys.GROUP_TTL}, {keys.DAY}",  # a cancel flag lives as long as sessions.cancel's
        f"local JOB_SCHEDULED, JOB_DEFERRED = '{jobs.SCHEDULED}', '{jobs.DEFERRED}'", "",
    ])


SCRIPT = lua_header() + (Path(__file__).with_name("start.lua")).read_text()


def _slots(names: tuple[str, ...], values: dict[str, Any]) -> list[Any]:
    """`values` in the order of `names`; every name filled, no other (a layout change is one edit)."""
    if len(values) != len(names):
        raise ValueError(f"start plan slots: {sorted(set(values) ^ set(names))} do not match the layout")
    return [values[name] for name in names]
EVENT_OPTIONAL = ("delivery", "event", "repository", "routine")  # on the event record when the firing has them


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
    role_check: str = ""  # JSON of routinely.firing.roles.RoleCheck, or "": no role to check
    group: GroupPlan | None = None  # its concurrency group, if the routine (or the trigger that fired) has one


@dataclass(frozen=True)
class GroupPlan:
    """A session's concurrency group (routine_file.concurrency), rendered for this firing."""

    key: str  # keys.concurrency_group
    name: str
    cancel_in_progress: bool
    start_at: float  # the debounce's end (epoch s), or 0: may start at once


@dataclass(frozen=True)
class GroupState:
    """A group's sessions as read before the script (routinely.firing.start.read_groups): "" none."""

    active: str = ""
    waiting: str = ""


@dataclass(frozen=True)
class Refused:
    """A matched routine that may not fire (routinely.firing.gate): recorded as a drop, admits nothing."""

    routine: Routine
    reason: str  # role | chain_depth
    detail: str  # why, in words, for the events page


@dataclass(frozen=True)
class StartPlan:
    version: int  # the catalog version routing used; a newer one in Redis makes the plan stale
    now: float
    created: str  # `now` as the records show it (received_at, created_at)
    event_id: str
    event: dict[str, Any]  # the event record but its outcome (routinely.records.events reads it)
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


def _new_id(kind: str) -> str:
    return ids.session_id() if kind == "session" else ids.event_id()


class _Event:
    """What a group template reads of a firing: its kind, and its payload parsed once, when a
    group first needs it (a routine without `concurrency` costs nothing)."""

    def __init__(self, firing: Any) -> None:
        self.firing = firing
        self.kind = firing.event.partition(".")[0] if firing.kind == "github" and firing.event else None
        self._payload: Any = None

    @property
    def payload(self) -> dict[str, Any] | None:
        if self._payload is None:
            try:
                self._payload = orjson.loads(self.firing.payload) if self.firing.payload else {}
            except orjson.JSONDecodeError:
                self._payload = {}
        return self._payload if isinstance(self._payload, dict) and self._payload else None


def _concurrency(routine: Routine, event: _Event) -> Concurrency | None:
    """The group settings of a firing: those of the first github trigger that fired it, when
    that trigger has its own, else the routine's (the same tests routing made: events,
    command, filters)."""
    firing = event.firing
    if event.kind is None or not any(t.concurrency for t in routine.github):
        return routine.concurrency
    fields = Fields(event.kind, event.payload or {})
    for trig in routine.github:
        if (wants_event(trig.events, event.kind, firing.event) and trig.command in (None, firing.command)
                and matches_all(trig.filters, fields, event.kind)):
            return trig.concurrency or routine.concurrency
    return routine.concurrency


def _group(routine: Routine, event: _Event, now: float) -> GroupPlan | None:
    conc = _concurrency(routine, event)
    if conc is None:
        return None
    firing = event.firing
    name = conc.render(event.kind, firing.repository, firing.event, event.payload if conc.fields else None)
    if name is None:  # a manual run of a routine whose group reads the event: it joins no group
        return None
    return GroupPlan(keys.concurrency_group(routine.key, name), name, conc.cancel_in_progress,
                     now + conc.debounce_seconds if conc.debounce_seconds else 0)


def build(firing: Any, catalog: Catalog, matched: list[Routine], now: float,
          new_id: Callable[[str], str] = _new_id, refused: Iterable[Refused] = (), chain_depth: int = 1,
          trim: Callable[[str], bool] = lambda index: True, role_checks: Mapping[str, Any] = {}) -> StartPlan:
    """The plan for `firing` (routinely.firing.start.Firing) routed to `matched` at `now`; `refused`
    and `chain_depth` come from routinely.firing.gate (github firings; others start chains at 1);
    `trim(index)` says whether this firing trims a listing index to its window: "events",
    "sessions", or "routine:NAME" (routinely.firing.start: each at most once a second); `role_checks`
    (routinely.firing.gate, by routine key) the RoleCheck a session keeps for its worker."""
    event_id = new_id("event")
    sessions = []
    source = _Event(firing)
    for routine in matched:
        if routine.paused:
            continue
        sessions.append(SessionPlan(
            id=new_id("session"),
            routine=routine.name,
            routine_key=routine.key,
            account=routine.account,
            checks=admission.checks(routine, catalog.accounts[routine.account], now),
            job_timeout=int(routine.timeout_minutes * 60) + JOB_MARGIN_SECONDS,
            job_description=f"{routine.key} {firing.kind}",
            # the per-process "trimmed lately" mark stays by name (routinely.firing.start keeps it so): a
            # name two accounts share delays one of their trims by at most a second
            trim=trim("routine:" + routine.name),
            role_check=role_checks[routine.key].encode() if routine.key in role_checks else "",
            # a sender whose role is not yet known joins no group: it must not replace or cancel the
            # group's sessions before the worker finds it may fire at all (it runs on its own if it may)
            group=None if routine.key in role_checks else _group(routine, source, now),
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


def _group_keys(group: GroupPlan | None, groups: Mapping[str, GroupState], unused: str) -> dict[str, str]:
    state = groups.get(group.key, GroupState()) if group else GroupState()
    a, w = state.active, state.waiting
    return {"group": group.key if group else unused,
            "active_session": keys.session(a) if a else unused, "active_job": jobs.job_key(a) if a else unused,
            "active_cancel": keys.session_cancel(a) if a else unused,
            "waiting_session": keys.session(w) if w else unused, "waiting_job": jobs.job_key(w) if w else unused}


def _group_args(group: GroupPlan | None, groups: Mapping[str, GroupState]) -> dict[str, Any]:
    if group is None:
        return {"group": "", "active": "", "waiting": "", "cancel_in_progress": 0, "start_at": 0, "start_at_iso": ""}
    state = groups.get(group.key, GroupState())
    return {"group": group.name, "active": state.active, "waiting": state.waiting,
            "cancel_in_progress": 1 if group.cancel_in_progress else 0,
            "start_at": f"{group.start_at:.3f}" if group.start_at else 0,
            "start_at_iso": iso(group.start_at) if group.start_at else ""}


def encode(plan: StartPlan, job: jobs.JobTemplate, queue_name: str,
           groups: Mapping[str, GroupState] = {}) -> tuple[list[str], list[Any]]:
    """The plan as start.lua's KEYS and ARGV, slot by slot by name (the layout above); the
    payload is not among them: routinely.firing.start SETs it in the same MULTI (through Lua it would
    cost Redis ~15x more: the script's strings are hashed whole). `groups`: the state of each
    session's concurrency group (by key) as read before; its sessions' keys are declared."""
    event_key = keys.event(plan.event_id)
    now_ms = int(plan.now * 1000)
    kv = _slots(FIXED_KEY_NAMES, {
        "version": keys.ROUTINES_VERSION, "event": event_key, "events_index": keys.EVENTS,
        "sessions_index": keys.SESSIONS, "queue": jobs.queue_key(queue_name), "queues": jobs.QUEUES_KEY,
        "installations": keys.INSTALLATIONS, "claim": plan.claim or event_key,
        "payload": keys.payload(plan.event_id) if plan.keeps_payload else event_key,
        "scheduled": jobs.scheduled_key(queue_name)})
    argv: list[Any] = _slots(FIXED_ARG_NAMES, {
        "version": plan.version, "claim_ttl": plan.claim_ttl if plan.claim else 0,
        "keep_payload": 1 if plan.keeps_payload else 0, "score": f"{plan.now * 1000:.3f}", "now_iso": plan.created,
        "sessions_trim": now_ms - _trim_ms["sessions"] if "sessions" in plan.trim else "",
        "events_trim": now_ms - _trim_ms["events"] if "events" in plan.trim else "",
        "event_id": plan.event_id, "event_ttl": keys.EVENT_TTL, "session_ttl": keys.SESSION_TTL,
        "skipped": orjson.dumps(plan.skipped).decode() if plan.skipped else "[]",
        "job_data": job.data if plan.sessions else "", "job_stamp": jobs.stamp(plan.now),
        "job_fields": job.packed.count if plan.sessions else 0, "sessions": len(plan.sessions),
        "refused": len(plan.refused), "installation_ops": len(plan.installations), "chain_depth": plan.chain_depth,
        "event_json": orjson.dumps(plan.event)[:-1], "trigger": plan.trigger})
    if plan.sessions:
        argv.append(job.packed)
    for op in plan.installations:
        argv += _slots(INSTALLATION_ARG_NAMES, {"op": op[0], "repo": op[1], "id": op[2] if len(op) > 2 else ""})
    for s in plan.sessions:
        c = s.checks
        kv += _slots(SESSION_KEY_NAMES, {
            "routine_window": c.routine.key, "account_window": c.account.key, "daily_cap": c.cap.key,
            "drops": c.drops_key, "session": keys.session(s.id), "routine_sessions": keys.sessions_of(s.routine_key),
            "job": jobs.job_key(s.id), "spend": c.budget.key if c.budget else event_key,
            **_group_keys(s.group, groups, event_key)})
        r, a, d = c.windows
        argv += _slots(SESSION_ARG_NAMES, {
            "id": s.id, "routine": s.routine,
            "routine_max": r.max, "routine_ttl": r.ttl, "routine_retry": r.retry_after,
            "account_max": a.max, "account_ttl": a.ttl, "account_retry": a.retry_after,
            "cap_max": d.max, "cap_ttl": d.ttl, "cap_retry": d.retry_after,
            "extra_usage": 1 if c.extra_usage else 0, "job_timeout": s.job_timeout, "job_description": s.job_description,
            "budget_max": repr(c.budget.max) if c.budget else -1, "budget_retry": c.budget.retry_after if c.budget else 0,
            "routine_key": s.routine_key, "account": s.account,
            "routine_trim": now_ms - _trim_ms["sessions"] if s.trim else "", "role_check": s.role_check,
            **_group_args(s.group, groups)})
    for refused in plan.refused:
        kv += _slots(REFUSED_KEY_NAMES, {"drops": keys.drops(refused.routine.key)})
        argv += _slots(REFUSED_ARG_NAMES, {"routine": refused.routine.name, "reason": refused.reason,
                                          "detail": refused.detail})
    return kv, argv
