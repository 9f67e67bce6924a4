"""The role check a session passes before it runs, off the request path.

routinely.firing.gate never asks GitHub: a firing of a trigger with `roles` whose actor's role is
not cached is started with a `role_check` on its session record (routinely.firing.roles.RoleCheck).
The runner calls `check` before any sandbox or workspace exists, so a stranger's delivery
costs one GitHub call (or one Redis GET while the answer is cached), never a session's
sandbox. A role that is not allowed, or a GitHub that does not answer within the deadline,
ends the session unrun and records a drop with reason `role` where routinely.firing.gate records
it: on the event (`dropped`, with a `detail`) and in the routine's drop counts; the session
leaves the event's `sessions`, so `routinely explain` and the events page say what they said
when roles were decided at the door. What admitting the session counted is given back.
"""
from __future__ import annotations

from typing import Any, Callable

import orjson
import redis

from routinely.firing import admission
from routinely.storage import keys
from routinely.firing.roles import RoleCheck, RoleError, Roles
from routinely.routine_file import Account, Routine
from routinely.records.sessions import Session
from routinely.when import iso, parse_iso
from workers.outbox import patiently

REASON = "role"  # routinely.firing.gate.ROLE: the same drop, decided later

# the admission counters this session's start counted, given back: each still in its window
# goes down by one; one whose window has ended (or never was) is left alone, never made
REFUND = """
for _, counter in ipairs(KEYS) do
  if tonumber(redis.call('GET', counter) or '0') > 0 then redis.call('DECR', counter) end
end
"""


def check(rt: Any, session_id: str, session: Session, routine: Routine, account: Account | None,
          log: Callable[[str], None]) -> tuple[str, None, str] | None:
    """None when the session may run (no role to check, or the actor's role is allowed); else
    (status, None, reason) for the runner: `canceled` for a role not allowed, `failed` when
    GitHub did not say (fail closed; a replay asks again). The drop is durable when it returns.
    `rt` is the worker's Runtime (settings, conn, tokens, outage)."""
    if not session.role_check:
        return None
    wanted = RoleCheck.decode(session.role_check)
    try:
        role = Roles(rt.settings, rt.tokens).role(rt.conn, wanted.repository, wanted.actor, wanted.installation)
    except RoleError as exc:
        status, detail = "failed", f"{exc}; the session did not run: replay the event to ask again"
    else:
        why = wanted.refusal(role)
        if why is None:
            log(f"routinely: {wanted.actor} has role {role} on {wanted.repository}: may fire")
            return None
        status, detail = "canceled", why
    patiently(lambda: record_drop(rt.conn, session_id, session, routine, account, detail, rt.settings.clock()),
              rt.outage, rt.conn)
    return status, None, f"routinely: dropped ({REASON}): {detail}"


def record_drop(conn: redis.Redis, session_id: str, session: Session, routine: Routine,
                account: Account | None, detail: str, now: float) -> bool:
    """Move the session from its event's `sessions` to its `dropped` (reason `role`, `detail`),
    count the drop as start.lua does, and give back the admission it counted, in one
    transaction. False (and nothing written) when the event no longer lists the session:
    already recorded (a requeued session checked again) or the event expired."""
    if session.event_id is None:  # no event lists it (start.lua writes one with every role check)
        return False
    event_key = keys.event(session.event_id)
    counters = []
    if account is not None:
        at = parse_iso(session.created_at) if session.created_at else now
        counters = [w.key for w in admission.checks(routine, account, at).windows]
    refund = conn.register_script(REFUND)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(event_key)
                got = pipe.get(event_key)
                record = orjson.loads(got) if got else None
                if record is None or session_id not in (record.get("sessions") or []):
                    pipe.unwatch()
                    return False
                record["sessions"] = [s for s in record["sessions"] if s != session_id]
                record["dropped"] = [*(record.get("dropped") or []),
                                     {"routine": routine.name, "reason": REASON, "detail": detail, "retry_after": 0}]
                pipe.multi()
                pipe.set(event_key, orjson.dumps(record), keepttl=True)
                drops = keys.drops(routine.key)
                pipe.hincrby(drops, REASON, 1)
                pipe.hset(drops, mapping={"last_at": iso(now), "last_reason": REASON, "retry_at_ms": int(now * 1000)})
                pipe.expire(drops, keys.SESSION_TTL)
                if counters:
                    refund(keys=counters, client=pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                continue
