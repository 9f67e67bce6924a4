"""Start: the one way a firing of any kind (github, api, schedule, manual) becomes sessions.

`Starter.fire` routes against the process's cached catalog, builds the start plan
(routinely.firing.start_plan: pure Python) and has start.lua apply it in one round trip: the
stale check, the claim, admission, session records, RQ jobs and the event record happen
in a single atomic step. When it returns, every outcome is durable in Redis; when Redis
fails, it raises redis.RedisError and nothing was half-written.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import redis
from redis.exceptions import NoScriptError

from routinely.firing import admission, start_plan
from routinely.storage import jobs, keys
from routinely.records import sessions
from routinely.routines.catalog import Catalog, CatalogCache
from routinely.config import Settings
from routinely.routine_file import Routine
from routinely.when import iso, parse_iso
from routinely.storage.wire import Wire, pack

__all__ = ["Firing", "FireRefused", "Outcome", "Routed", "Starter", "fire_one", "iso"]

SCRIPT = start_plan.SCRIPT  # start.lua behind its layout, by name
# how often a process trims the listing indexes to their windows (keys.EVENTS_KEPT, SESSIONS_KEPT):
# not on every firing — three ZREMRANGEBYSCOREs a firing cost more than the rest of an index write
TRIM_SECONDS = 1.0
# a plan whose concurrency group changed between its read and the script is read again; each
# round some firing of the group gets through, so only that many firings at once could exhaust it
GROUP_ROUNDS = 100


@dataclass
class Firing:
    """What happened at the door, whatever the trigger kind."""

    kind: str  # github | api | schedule | manual
    event: str | None = None  # e.g. pull_request.opened
    routine: str | None = None  # the routine an api/schedule/manual firing is for (shown on its event)
    delivery: str | None = None  # X-GitHub-Delivery: deduplicated
    repository: str | None = None
    text: str | None = None  # api: passed raw to the agent; github: the rest of a /command's line
    command: str | None = None  # github: the /command a comment starts with (routinely.firing.deliveries)
    scheduled_for: str | None = None
    previous_run_at: str | None = None  # schedule: the routine's previous scheduled run ("" on the first)
    payload: bytes = b""  # github: the raw body, kept for the session when one is made
    installations: list[list[str]] = field(default_factory=list)  # ["set", repo, id] | ["del", repo]
    claim: str | None = None  # a key that makes the firing happen once (delivery id, scheduled run)
    claim_ttl: int = keys.DELIVERY_TTL
    # github: the filter fields the routines watching the repository read, for "why did
    # this not fire" (stored as the event's `filter_fields`); None when nobody watches it
    filter_fields: dict[str, Any] | None = None

    def trigger(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("event", "delivery", "command", "text", "scheduled_for", "previous_run_at"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass
class Outcome:
    event_id: str
    duplicate: bool = False
    sessions: list[dict[str, Any]] = field(default_factory=list)  # {id, routine, metered}
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {routine, reason, retry_after}
    skipped: list[str] = field(default_factory=list)  # paused routines


@dataclass
class Routed:
    """What routing decided beyond "these routines match" (routinely.firing.gate): firings refused
    before admission (`role`, `chain_depth`), recorded as drops, the sessions' chain depth, and
    the role each routine's session must check before it runs (routinely.firing.roles.RoleCheck, by key)."""

    routines: list[Routine]
    refused: list[start_plan.Refused] = field(default_factory=list)
    chain_depth: int = 1
    role_checks: dict[str, Any] = field(default_factory=dict)


Router = Callable[[Catalog], "list[Routine] | Routed"]


class Starter:
    def __init__(self, conn: redis.Redis, settings: Settings, cache: CatalogCache | None = None) -> None:
        self.conn = conn
        self.settings = settings
        self.cache = cache or CatalogCache()
        self._wire = Wire(settings.redis_url)
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._job = jobs.JobTemplate.build(conn, settings.queue_name)
        self._trimmed: dict[str, float] = {}  # listing index -> when this process last trimmed it

    def fire(self, firing: Firing, route: Router) -> Outcome:
        """Route and start a firing. Raises redis.RedisError when Redis cannot be reached."""
        for _ in range(5):
            catalog = self.cache.get(self.conn)
            routed = route(catalog)
            if not isinstance(routed, Routed):
                routed = Routed(routed)
            now = self.settings.clock()
            due = lambda index: now - self._trimmed.get(index, float("-inf")) >= TRIM_SECONDS  # noqa: E731
            plan = start_plan.build(firing, catalog, routed.routines, now,
                                    refused=routed.refused, chain_depth=routed.chain_depth, trim=due,
                                    role_checks=routed.role_checks)
            result = self._apply(plan)
            if result is not None:
                # an index is trimmed only where the script wrote to it: the sessions indexes by admitted sessions
                made = {s["routine"] for s in result.sessions}
                done = {"events"} & plan.trim | ({"sessions"} & plan.trim if made else set())
                done |= {"routine:" + s.routine for s in plan.sessions if s.trim and s.routine in made}
                for index in done:
                    self._trimmed[index] = now
                return result
            self.cache.reload(self.conn)  # configuration changed under us: route again
        raise redis.RedisError("the routine configuration keeps changing; try again")

    def _apply(self, plan: start_plan.StartPlan) -> Outcome | None:
        """Run start.lua on the plan: None when the plan was stale. The plan's concurrency
        groups are read first (the script declares their sessions' keys); a group that changed
        before the script ran is read again."""
        for _ in range(GROUP_ROUNDS):
            kv, argv = start_plan.encode(plan, self._job, self.settings.queue_name, read_groups(self.conn, plan))
            reply = self._execute(kv, argv, plan)
            if reply[0] != 3:
                break
        else:
            raise redis.RedisError("a concurrency group keeps changing under this firing; try again")
        if reply[0] == 0:
            return None
        if reply[0] == 1:
            return Outcome(event_id=plan.event_id, duplicate=True)
        routines = {s.id: s.routine for s in plan.sessions}
        n = reply[1]
        sessions = [{"id": reply[i].decode(), "routine": routines[reply[i].decode()], "metered": reply[i + 1] == b"1"}
                    for i in range(2, 2 + 2 * n, 2)]
        dropped = [{"routine": reply[i].decode(), "reason": reply[i + 1].decode(), "retry_after": reply[i + 2]}
                   for i in range(2 + 2 * n, len(reply), 3)]
        return Outcome(event_id=plan.event_id, sessions=sessions, dropped=dropped, skipped=list(plan.skipped))

    def _execute(self, kv: list[str], argv: list[Any], plan: start_plan.StartPlan) -> list[Any]:
        """start.lua alone, or in one MULTI after SETting the payload it may keep."""
        script = pack("EVALSHA", self._sha, len(kv), *kv, *argv)
        for _ in range(2):
            try:
                if not plan.keeps_payload:
                    return self._wire.call_packed(script)
                _, result = self._wire.transaction(
                    [pack("SET", keys.payload(plan.event_id), plan.payload, "EX", keys.EVENT_TTL), script])
                if isinstance(result, Exception):
                    raise result
                return result
            except NoScriptError:  # a new, restarted or flushed Redis; the retry rewrites the same payload key
                self._wire.call("SCRIPT", "LOAD", SCRIPT)
        if plan.keeps_payload:
            self.conn.delete(keys.payload(plan.event_id))  # SET without its script: nothing may point at it
        raise redis.RedisError("Redis keeps forgetting the start script; try again")


def read_groups(conn: redis.Redis, plan: start_plan.StartPlan) -> dict[str, start_plan.GroupState]:
    """The sessions of each concurrency group the plan's sessions join, as they are now (one
    round trip, and none for a plan without groups)."""
    wanted = list(dict.fromkeys(s.group.key for s in plan.sessions if s.group))
    if not wanted:
        return {}
    pipe = conn.pipeline(transaction=False)
    for key in wanted:
        pipe.hmget(key, "active", "waiting")
    return {key: start_plan.GroupState(*((v or b"").decode() for v in got)) for key, got in zip(wanted, pipe.execute())}


_RELEASE = """
local g = redis.call('HMGET', KEYS[1], 'active', 'waiting')
if (g[1] or '') ~= ARGV[2] or (g[2] or '') ~= ARGV[3] then return -1 end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'succeeded' and status ~= 'failed' and status ~= 'timed_out' and status ~= 'canceled' then return 0 end
local ended, waiting = ARGV[1], ARGV[3]
if ended == waiting then redis.call('HDEL', KEYS[1], 'waiting') return 0 end
if ended ~= ARGV[2] then return 0 end
if waiting ~= '' and redis.call('HGET', KEYS[3], 'status') == 'queued' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[1], 'active', waiting)
  redis.call('HDEL', KEYS[1], 'waiting')
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  if ARGV[4] ~= '0' then
    redis.call('HSET', KEYS[4], 'status', 'scheduled')
    redis.call('ZADD', KEYS[6], ARGV[4], waiting)
  else
    redis.call('HSET', KEYS[4], 'status', 'queued', 'enqueued_at', ARGV[5])
    redis.call('RPUSH', KEYS[5], waiting)
  end
  return 1
end
redis.call('DEL', KEYS[1])
return 1
"""


def release(conn: redis.Redis, session_id: str, now: float | None = None) -> None:
    """Hand a session's concurrency group on once the session has ended (any final status,
    canceled before it started included): the session waiting behind it takes the group and
    goes onto its queue (into RQ's scheduled jobs while its debounce lasts); with none waiting
    the group is freed. A session in no group, not yet ended, or no longer holding its group
    changes nothing; calling it twice is harmless. Callers: workers.outbox (a run's end),
    routinely.records.sessions.cancel. Raises redis.RedisError."""
    now = time.time() if now is None else now
    ended = sessions.load(conn, session_id)
    group = ended.group_key if ended else None
    if not group:
        return
    for _ in range(GROUP_ROUNDS):
        active, waiting = ((v or b"").decode() for v in conn.hmget(group, "active", "waiting"))
        if session_id not in (active, waiting):
            return
        queue_name, start_at = None, 0.0
        if waiting:
            origin = conn.hget(jobs.job_key(waiting), "origin")
            queue_name = origin.decode() if origin else None
            behind = sessions.load(conn, waiting)
            start_at = parse_iso(behind.start_at) if behind and behind.start_at else 0.0
        unused = group
        done = conn.eval(_RELEASE, 6, group, keys.session(session_id), keys.session(waiting) if waiting else unused,
                         jobs.job_key(waiting) if waiting else unused,
                         jobs.queue_key(queue_name) if queue_name else unused,
                         jobs.scheduled_key(queue_name) if queue_name else unused,
                         session_id, active, waiting, f"{start_at:.3f}" if start_at > now else 0, jobs.stamp(now),
                         keys.GROUP_TTL)
        if done != -1:
            return


class FireRefused(Exception):
    """A named routine did not start: unknown, paused or dropped; str() is the line to show,
    `status` the HTTP code it deserves (404, 400, 429) and `retry_after` a drop's wait."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def fire_one(settings: Settings, conn: redis.Redis, ref: str, firing: Firing,
             starter: Starter | None = None) -> dict[str, Any]:
    """Fire one named routine (`account/name` or a unique name) through the shared start
    path; return the new session's record. Raises FireRefused for an unknown or paused
    routine or a dropped firing."""

    def route(cat: Catalog) -> list[Routine]:
        try:
            routine = cat.find(ref)
        except LookupError as exc:
            raise FireRefused(str(exc), 404) from None
        firing.routine = firing.routine or routine.key  # the event names the routine it was for
        return [routine]

    outcome = (starter or Starter(conn, settings)).fire(firing, route)
    if outcome.skipped:
        raise FireRefused(f"routine {ref!r} is paused: `routinely resume {ref}` first", 400)
    if outcome.dropped:
        d = outcome.dropped[0]
        raise FireRefused(admission.drop_message(d["reason"], d["retry_after"]), 429, d["retry_after"])
    return sessions.get(conn, settings, outcome.sessions[0]["id"])
