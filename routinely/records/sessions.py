"""The session store: the one place that reads and changes session records.

Records are created only by the start script (routinely.firing.start); here they are read,
listed newest first, and moved through their lifecycle. A record is read as a `Session`
(`load`), so each field is decoded in one place and means one thing everywhere; only bulk
reads of a field or two (`fields_since`, the routines' and session rows' lookups) take raw
values. Every write after that goes through `write` (the runner's outbox, the model
gateway's meter, the gateway's usage totals) or `transition` (status changes), which know
the record's fields: WRITABLE below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson
import redis

from routinely.records import actions
from routinely.storage import jobs, keys
from routinely.firing.chain import ROOT_DEPTH
from routinely.config import Settings

STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "canceled")
FINAL = frozenset({"succeeded", "failed", "timed_out", "canceled"})
MAX_LIMIT = 1000
_PUBLIC = ("id", "routine", "account", "status", "created_at", "started_at", "finished_at")


@dataclass(frozen=True)
class Session:
    """A session record as stored at keys.session(id), decoded once (`from_raw`).

    A field the record lacks (not written yet, or cleared to "" by `write`) reads as None,
    or as the empty value its type has (`trigger` {}, `secrets_in_env` (), `metered` False);
    `id` is "" only for a stray hash without one. Written by start.lua (id … start_at,
    superseded_by), `transition` (LIFECYCLE_FIELDS), the runner (RUNNER_FIELDS) and the
    model gateway (GATEWAY_FIELDS)."""

    id: str = ""
    routine: str | None = None  # the routine's name; `routine_key` is ACCOUNT/NAME
    routine_key: str | None = None
    account: str | None = None
    status: str | None = None  # one of STATUSES
    created_at: str | None = None  # ISO times, as written
    trigger: dict[str, Any] = field(default_factory=dict)  # the firing: kind, event, delivery, text …
    event_id: str | None = None  # the event record that started it (and its kept payload)
    metered: bool = False  # started past the daily cap, on extra usage
    chain_depth: int = ROOT_DEPTH  # routinely.firing.chain: records from before chains are roots
    role_check: str | None = None  # a RoleCheck, encoded: workers.role_check decodes and asks it
    group: str | None = None  # its concurrency group, as the routine names it
    group_key: str | None = None  # that group's hash (routinely.firing.start.release)
    start_at: str | None = None  # the group's debounce: queued, not run, before this
    superseded_by: str | None = None  # the session of its group that replaced or canceled it
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None  # why it ended as it did, when not a plain exit
    host: str | None = None  # the host and worker pid that run it
    pid: int | None = None
    sandbox: str | None = None  # "on" or "off" (ROUTINELY_SANDBOX=off)
    sandbox_pid: int | None = None
    sandbox_uid: int | None = None
    sandbox_cgroup: str | None = None
    resources: dict[str, Any] | None = None  # what its sandbox used
    warm_start: str | None = None  # what it reused: mirrors, a cached setup
    agent_usage: dict[str, Any] | None = None  # what the agent itself reported
    prompt: str | None = None  # the runner's bounded copy of its agent's prompt
    secrets_in_env: tuple[str, ...] = ()  # secrets its processes held as variables (secrets_as_env)
    usage: dict[str, Any] | None = None  # the model gateway's metered total (routinely.records.model_usage)

    @classmethod
    def from_raw(cls, raw: dict[bytes, bytes]) -> "Session":
        """The record from its stored hash (HGETALL's reply). Raises orjson.JSONDecodeError or
        ValueError for a JSON or integer field that is not one (no writer stores such)."""
        def text(name: str) -> str | None:
            value = raw.get(name.encode())
            return value.decode(errors="replace") if value else None

        def number(name: str) -> int | None:
            value = text(name)
            return int(value) if value else None

        def parsed(name: str) -> Any:
            value = raw.get(name.encode())
            return orjson.loads(value) if value else None

        depth, held = text("chain_depth"), text("secrets_in_env")
        return cls(
            id=text("id") or "", routine=text("routine"), routine_key=text("routine_key"), account=text("account"),
            status=text("status"), created_at=text("created_at"), trigger=parsed("trigger") or {},
            event_id=text("event_id"), metered=raw.get(b"metered") == b"1",
            chain_depth=int(depth) if depth and depth.isdigit() else ROOT_DEPTH,
            role_check=text("role_check"), group=text("group"), group_key=text("group_key"),
            start_at=text("start_at"), superseded_by=text("superseded_by"),
            started_at=text("started_at"), finished_at=text("finished_at"), exit_code=number("exit_code"),
            reason=text("reason"), host=text("host"), pid=number("pid"),
            sandbox=text("sandbox"), sandbox_pid=number("sandbox_pid"), sandbox_uid=number("sandbox_uid"),
            sandbox_cgroup=text("sandbox_cgroup"), resources=parsed("resources"), warm_start=text("warm_start"),
            agent_usage=parsed("agent_usage"), prompt=text("prompt"),
            secrets_in_env=tuple(held.split(",")) if held else (), usage=parsed("usage"))


def load(conn: redis.Redis, session_id: str) -> Session | None:
    """One session's record, or None when there is none (never made, or expired)."""
    raw = get_raw(conn, session_id)
    return Session.from_raw(raw) if raw else None


def to_public(session: Session, settings: Settings) -> dict[str, Any]:
    """A session as the JSON API and the CLI show it."""
    out: dict[str, Any] = {name: getattr(session, name) or None for name in _PUBLIC}
    out["trigger"] = session.trigger
    out["exit_code"] = session.exit_code
    out["metered"] = session.metered
    out["url"] = f"{settings.public_url}/sessions/{out['id']}"
    out["log_url"] = f"{settings.public_url}/api/sessions/{out['id']}/log"
    out["usage"], out["agent_usage"] = session.usage, session.agent_usage  # the gateway's meter; the agent's report
    if session.reason:
        out["reason"] = session.reason
    if session.warm_start:
        out["warm_start"] = session.warm_start  # what the session reused: mirrors, a cached setup
    out["resources"] = session.resources
    if session.sandbox:
        out["sandbox"] = session.sandbox  # "off": the session ran unsandboxed (ROUTINELY_SANDBOX=off)
    if session.secrets_in_env:
        out["secrets_in_env"] = list(session.secrets_in_env)  # secrets_as_env: its processes held these values as variables
    for name in ("group", "start_at", "superseded_by"):  # its concurrency group, its debounce, who replaced it
        if value := getattr(session, name):
            out[name] = value
    return out


def describe(s: dict[str, Any], now: float) -> str:
    """One session as `routinely sessions show` prints it: the record (times local, with
    their zone), the gateway's usage, the agent's report."""
    from routinely import when

    def at(value: str | None) -> str:
        return when.local_and_relative(when.parse_iso(value), now) if value else "-"

    t = s["trigger"]
    rows = [("id", s["id"]), ("routine", f"{s['account']}/{s['routine']}"), ("status", s["status"]),
            ("trigger", " · ".join(str(t[k]) for k in ("kind", "event", "delivery", "scheduled_for") if t.get(k))),
            ("created", at(s["created_at"])), ("started", at(s["started_at"])), ("finished", at(s["finished_at"])),
            ("exit code", "-" if s["exit_code"] is None else str(s["exit_code"])),
            ("metered", "yes" if s["metered"] else "no"), ("reason", s.get("reason") or "-")]
    lines = [f"{name + ':':<11}{value}" for name, value in rows]
    u = s.get("usage")
    if u:
        cost = "unknown" if u["cost_usd"] is None else f"${u['cost_usd']:.4f}"
        lines.append(f"usage (metered by the gateway): {u['requests']} requests, {u['input_tokens']} input, "
                     f"{u['output_tokens']} output, {u['cache_creation_input_tokens']} cache write, "
                     f"{u['cache_read_input_tokens']} cache read tokens, cost {cost}, models {', '.join(u['models']) or '-'}")
    a = s.get("agent_usage")
    if a:
        lines.append(f"reported by the agent: {a.get('turns')} turns, {a.get('input_tokens')} input, "
                     f"{a.get('output_tokens')} output tokens, cost {a.get('cost_usd')}")
    lines += [f"{'page:':<11}{s['url']}", f"{'log:':<11}{s['log_url']}"]
    return "\n".join(lines)


def get_raw(conn: redis.Redis, session_id: str) -> dict[bytes, bytes] | None:
    """The record as stored: for `load`, and for tests of what is stored."""
    raw = conn.hgetall(keys.session(session_id))
    return raw or None


def get(conn: redis.Redis, settings: Settings, session_id: str) -> dict[str, Any] | None:
    """One session as `shown`, or None."""
    session = load(conn, session_id)
    return shown(conn, settings, session) if session else None


def shown(conn: redis.Redis, settings: Settings, session: Session) -> dict[str, Any]:
    """One session (`to_public`) with what its github connector did (`actions`, `github_reads`)."""
    out = to_public(session, settings)
    out["actions"], out["github_reads"] = actions.of_session(conn, session.id)
    return out


def index_of(conn: redis.Redis, routine: str | None) -> str | None:
    """The listing index for a `routine` filter: every session without one; one routine's own
    index for `ACCOUNT/NAME`, or for a NAME only one account has (None: no such routine, so no
    sessions). Raises control.Refused (400) for a name several accounts have: their sessions
    are kept apart, and the caller says which."""
    if not routine:
        return keys.SESSIONS
    if "/" in routine:
        return keys.sessions_of(routine)  # also a routine since removed: its sessions are kept 30 days
    from routinely.routines import catalog, control  # control starts sessions: imported here, not at the top

    named = [r for r in catalog.load(conn).routines.values() if r.name == routine]
    if len(named) > 1:
        raise control.Refused(f"routine {routine!r} exists in several accounts; name it as ACCOUNT/{routine}", 400)
    return keys.sessions_of(named[0].key) if named else None


def listing(conn: redis.Redis, settings: Settings, routine: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Sessions newest first (at most `limit`, capped at MAX_LIMIT), of one routine when
    `routine` names it (see `index_of`)."""
    index = index_of(conn, routine)
    if index is None:
        return []
    ids_ = conn.zrevrange(index, 0, max(1, min(limit, MAX_LIMIT)) - 1)
    return [to_public(session, settings) for session in _load_many(conn, ids_)]


SCAN_CHUNK = 200


def page(conn: redis.Redis, settings: Settings, routine: str | None = None, status: str | None = None,
         kind: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], bool]:
    """Sessions newest first matching every filter given: the `limit` after skipping `offset`
    matches, and whether more follow. Reads the index in chunks, so a page costs what it shows
    (plus what the filters skip), not the whole history. `routine` as `index_of` takes it."""
    index = index_of(conn, routine)
    if index is None:
        return [], False
    if not status and not kind:
        ids_ = conn.zrevrange(index, offset, offset + limit)
        rows = [to_public(session, settings) for session in _load_many(conn, ids_)]
        return rows[:limit], len(rows) > limit
    rows: list[dict[str, Any]] = []
    skipped, start = 0, 0
    while len(rows) <= limit:
        ids_ = conn.zrevrange(index, start, start + SCAN_CHUNK - 1)
        if not ids_:
            break
        start += len(ids_)
        for session in _load_many(conn, ids_):
            if status and session.status != status:
                continue
            public = to_public(session, settings)
            if kind and public["trigger"].get("kind") != kind:
                continue
            if skipped < offset:
                skipped += 1
                continue
            rows.append(public)
    return rows[:limit], len(rows) > limit


def _load_many(conn: redis.Redis, session_ids: Iterable[bytes]) -> list[Session]:
    """`load` for many ids in one round trip; those that expired left out."""
    pipe = conn.pipeline(transaction=False)
    for sid in session_ids:
        pipe.hgetall(keys.session(sid.decode()))
    return [Session.from_raw(raw) for raw in pipe.execute() if raw]


_FIELDS_SINCE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', ARGV[2], ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HMGET', ARGV[4] .. id, unpack(ARGV, 5))
end
return out
"""
FIELDS_CHUNK = 1000  # sessions read per script call: Redis is busy ~1 ms, then serves the door again


def fields_since(conn: redis.Redis, since: float, *names: str) -> list[list[bytes | None]]:
    """`names` of every session created since `since` (epoch s), oldest first, for the
    counts usage and metrics need: read inside Redis in chunks, one reply per chunk, instead
    of one command per session through the client. Raw values, not `Session`s: a day of
    sessions is a few fields each, and the callers count them without decoding the rest."""
    prefix = keys.session("")
    rows: list[list[bytes | None]] = []
    while True:
        chunk = conn.eval(_FIELDS_SINCE, 1, keys.SESSIONS, int(since * 1000), len(rows), FIELDS_CHUNK, prefix, *names)
        rows += chunk
        if len(chunk) < FIELDS_CHUNK:
            return rows


# The record's fields after the start script made it (start.lua writes id, routine, routine_key,
# account, status, created_at, trigger, event_id, metered, chain_depth, role_check, group,
# group_key, start_at): one declaration of what the others may write, and which part writes it.
LIFECYCLE_FIELDS = frozenset({"status", "started_at", "finished_at", "exit_code", "reason", "host", "pid"})  # transition
RUNNER_FIELDS = frozenset({"sandbox", "sandbox_pid", "sandbox_uid", "sandbox_cgroup", "resources", "warm_start",
                           "agent_usage", "prompt", "secrets_in_env"})  # workers.run, through its outbox
GATEWAY_FIELDS = frozenset({"usage"})  # the model gateway's running total (routinely.records.model_usage)
WRITABLE = LIFECYCLE_FIELDS | RUNNER_FIELDS | GATEWAY_FIELDS


def _encoded(fields: dict[str, Any]) -> dict[str, Any]:
    """Field values as stored ("" for None); a name the record does not have is refused."""
    unknown = set(fields) - WRITABLE
    if unknown:
        raise KeyError(f"a session record has no field {sorted(unknown)}: declare it in routinely.records.sessions")
    return {k: "" if v is None else v if isinstance(v, (str, bytes)) else str(v) for k, v in fields.items()}


def write(target: Any, session_id: str, **fields: Any) -> None:
    """Set fields of a session's record on `target`: a connection, or a pipeline the caller
    executes (the outbox writes its buffered fields with its log lines in one transaction)."""
    target.hset(keys.session(session_id), mapping=_encoded(fields))


def update(conn: redis.Redis, session_id: str, **fields: Any) -> None:
    write(conn, session_id, **fields)


_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
for i = 1, tonumber(ARGV[1]) do
  if ARGV[1 + i] == status then
    redis.call('HSET', KEYS[1], unpack(ARGV, tonumber(ARGV[1]) + 2))
    return 1
  end
end
return 0
"""


def transition(conn: redis.Redis, session_id: str, allowed: Iterable[str], **fields: Any) -> bool | None:
    """Set `fields` only if the session's status is one of `allowed` (atomically).

    Returns True when applied, False when the status did not allow it, None when there is
    no such session. Every status change goes through here, so racing actors (a cancel and
    a worker starting, a reaper and a late finish) cannot overwrite each other.
    """
    allowed = list(allowed)
    flat: list[Any] = []
    for k, v in _encoded(fields).items():
        flat += [k, v]
    result = conn.eval(_TRANSITION, 1, keys.session(session_id), len(allowed), *allowed, *flat)
    return None if result == -1 else bool(result)


SHUT_DOWN = "worker shut down"
# what a session queued again leaves behind of its stopped run (the next run sets them anew)
REQUEUED = {"started_at": None, "host": None, "pid": None, "sandbox_pid": None, "sandbox_uid": None,
            "sandbox_cgroup": None}


def done_outside(conn: redis.Redis, session_id: str, forwarded: Iterable[str] = ()) -> list[str]:
    """What a session did that others can see, one phrase each: its github connector's writes
    that reached GitHub (every recorded action but those its policy refused: one GitHub
    answered with an error may still have happened) and the refs its push door forwarded
    (`forwarded`: the runner's, as "REF to OWNER/REPO")."""
    done = []
    for a in actions.of_session(conn, session_id)[0]:
        if a.get("status") == "refused":
            continue
        target = f"{a.get('repo')}" + (f"#{a['number']}" if a.get("number") else "")
        done.append(f"github {a.get('tool')} {target}" + ("" if a.get("status") == "ok" else f" ({a.get('status')})"))
    return done + [f"pushed {ref}" for ref in forwarded]


def after_shutdown(conn: redis.Redis, session_id: str, forwarded: Iterable[str] = ()) -> tuple[str, str]:
    """The outcome of a running session its worker's shutdown stopped: (status, line for its log).

    Queued again ("queued": its runner writes it with REQUEUED, the worker puts its job back)
    when it did nothing outside (`done_outside`), so another worker runs it from the start;
    failed with reason SHUT_DOWN and the list of what it did otherwise — running it again
    would do that twice. A session canceled meanwhile stays canceled."""
    if conn.exists(keys.session_cancel(session_id)):
        return "canceled", "routinely: canceled while running"
    done = done_outside(conn, session_id, forwarded)
    if not done:
        return "queued", ("routinely: worker shut down before this session did anything outside (no github write, "
                          "no push forwarded); it is queued again for the next worker")
    return "failed", f"{SHUT_DOWN}; done outside: {', '.join(done)}"


def cancel(conn: redis.Redis, session_id: str, now_iso: str) -> str:
    """Cancel a queued or running session; returns the outcome in one word.

    A queued session is canceled at once and its job taken off the queue; a running one is
    flagged and its runner stops the agent's process group within a second.
    """
    done = transition(conn, session_id, ["queued"], status="canceled", finished_at=now_iso, reason="canceled before it started")
    if done is None:
        return "unknown"
    if done:
        jobs.cancel(conn, session_id)  # the job id is the session id
        from routinely.firing import start  # start reads sessions: imported here, not at the top

        start.release(conn, session_id)  # its concurrency group goes to the session waiting behind it
        return "canceled"
    session = load(conn, session_id)
    if session is not None and session.status == "running":
        conn.set(keys.session_cancel(session_id), "1", ex=keys.DAY)
        return "canceling"
    return "finished"
