"""Start: the one way a firing of any kind (github, api, schedule, manual) becomes sessions.

`Starter.fire` routes against the process's cached catalog, then runs start.lua once: the
stale check, dedup, admission, session records, RQ jobs and the event record happen in a
single atomic step. When it returns, every outcome is durable in Redis; when Redis fails,
it raises redis.RedisError and nothing was half-written.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson
import redis
from redis.exceptions import NoScriptError
from rq.job import Job, JobStatus
from rq.utils import utcformat

from routinely import admission, ids, keys
from routinely.catalog import Catalog, CatalogCache
from routinely.config import Settings
from routinely.routine_file import Routine
from routinely.store import Line

SCRIPT = Path(__file__).with_name("start.lua").read_text()
RUN_SESSION = "workers.run.run_session"
JOB_MARGIN_SECONDS = 600  # RQ's own timeout sits past the runner's, which ends the agent first


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Firing:
    """What happened at the door, whatever the trigger kind."""

    kind: str  # github | api | schedule | manual
    event: str | None = None  # e.g. pull_request.opened
    routine: str | None = None  # the routine an api/schedule/manual firing is for (shown on its event)
    delivery: str | None = None  # X-GitHub-Delivery: deduplicated
    repository: str | None = None
    text: str | None = None  # api: passed raw to the agent; github: the rest of a /command's line
    command: str | None = None  # github: the /command a comment starts with (routinely.gate)
    scheduled_for: str | None = None
    previous_run_at: str | None = None  # schedule: the routine's previous scheduled run ("" on the first)
    payload: bytes = b""  # github: the raw body, kept for the session when one is made
    installations: list[list[str]] = field(default_factory=list)  # ["set", repo, id] | ["del", repo]
    claim: str | None = None  # a key that makes the firing happen once (delivery id, scheduled run)
    claim_ttl: int = keys.DELIVERY_TTL

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
    """What routing decided beyond "these routines match" (routinely.gate): firings refused
    before admission (`role`, `chain_depth`), recorded as drops, and the sessions' chain depth."""

    routines: list[Routine]
    refused: list[dict[str, Any]] = field(default_factory=list)  # {routine: Routine, reason, detail}
    chain_depth: int = 1


Router = Callable[[Catalog], "list[Routine] | Routed"]


class Starter:
    def __init__(self, conn: redis.Redis, settings: Settings, cache: CatalogCache | None = None) -> None:
        self.conn = conn
        self.settings = settings
        self.cache = cache or CatalogCache()
        self._line = Line(conn)
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._queue_key = "rq:queue:" + settings.queue_name
        self._job_data, self._job_base = self._job_template()

    def _job_template(self) -> tuple[bytes, dict[str, str]]:
        """RQ's own job hash for run_session, built once: every session's job differs only
        in its id (= the session id), times, timeout and description."""
        job = Job.create(
            RUN_SESSION,
            id="template",
            connection=self.conn,
            status=JobStatus.QUEUED,
            origin=self.settings.queue_name,
            result_ttl=keys.DAY,
            failure_ttl=7 * keys.DAY,
        )
        job.enqueued_at = datetime.now(timezone.utc)
        mapping = job.to_dict()
        data = mapping.pop("data")
        fields = {k: v.value if isinstance(v, JobStatus) else str(v) for k, v in mapping.items()}
        return data, fields

    def _job_fields(self, routine: Routine, kind: str, stamp: str) -> list[str]:
        fields = dict(self._job_base)
        fields.update(
            created_at=stamp,
            enqueued_at=stamp,
            timeout=str(int(routine.spec["timeout_minutes"] * 60) + JOB_MARGIN_SECONDS),
            description=f"{routine.key} {kind}",
        )
        return [item for pair in fields.items() for item in pair]

    def fire(self, firing: Firing, route: Router) -> Outcome:
        """Route and start a firing. Raises redis.RedisError when Redis cannot be reached."""
        for _ in range(5):
            catalog = self.cache.get(self.conn)
            routed = route(catalog)
            if not isinstance(routed, Routed):
                routed = Routed(routed)
            result = self._run(firing, catalog, routed)
            if result is not None:
                return result
            self.cache.reload(self.conn)  # configuration changed under us: route again
        raise redis.RedisError("the routine configuration keeps changing; try again")

    def _run(self, firing: Firing, catalog: Catalog, routed: Routed) -> Outcome | None:
        matched = routed.routines
        now = self.settings.clock()
        now_ms = int(now * 1000)
        event_id = ids.event_id()
        trigger = firing.trigger()
        trigger_json = orjson.dumps(trigger).decode()
        skipped = [r.name for r in matched if r.paused]
        candidates, blobs = [], []
        created = iso(now)
        stamp = utcformat(datetime.fromtimestamp(now, timezone.utc))
        for routine in matched:
            if routine.paused:
                continue
            sid = ids.session_id()
            account = catalog.accounts[routine.account]
            limits = admission.checks(routine, account, now)
            session_fields = [
                "id", sid,
                "routine", routine.name,
                "routine_key", routine.key,
                "account", routine.account,
                "trigger", trigger_json,
                "event_id", event_id,
                "status", "queued",
                "created_at", created,
                "chain_depth", str(routed.chain_depth),
            ]
            blobs.append(self._job_data)
            candidates.append({
                "routine": routine.name,
                **limits,
                "session": {
                    "id": sid,
                    "key": keys.session(sid),
                    "fields": session_fields,
                    "indexes": [keys.SESSIONS, keys.sessions_of(routine.name)],
                },
                "job": {"key": Job.key_for(sid), "fields": self._job_fields(routine, firing.kind, stamp)},
            })
        event_fields = ["id", event_id, "kind", firing.kind, "received_at", created, "trigger", trigger_json]
        for name in ("delivery", "event", "repository", "routine"):
            value = getattr(firing, name)
            if value is not None:
                event_fields += [name, value]
        control = {
            "version_key": keys.ROUTINES_VERSION,
            "version": str(catalog.version),
            "dedup_key": firing.claim or "",
            "dedup_ttl": firing.claim_ttl,
            "now_ms": now_ms,
            "now_iso": created,
            "session_ttl": keys.SESSION_TTL,
            "sessions_trim": now_ms - keys.SESSIONS_KEPT * 1000,
            "events_trim": now_ms - keys.EVENTS_KEPT * 1000,
            "events_key": keys.EVENTS,
            "queue_key": self._queue_key,
            "queues_key": "rq:queues",
            "payload_key": keys.payload(event_id) if firing.payload and candidates else "",  # unmatched: no body kept
            "installations_key": keys.INSTALLATIONS,
            "installations": firing.installations,
            "skipped": orjson.dumps(skipped).decode(),
            "event": {"id": event_id, "key": keys.event(event_id), "ttl": keys.EVENT_TTL, "fields": event_fields},
            "candidates": candidates,
            "refused": [{"routine": r["routine"].name, "reason": r["reason"], "detail": r["detail"],
                         "drops_key": keys.drops(r["routine"].key)} for r in routed.refused],
        }
        raw = self._execute([orjson.dumps(control), *blobs], control["payload_key"], firing.payload)
        result = orjson.loads(raw)
        if result.get("stale"):
            return None
        if result.get("duplicate"):
            return Outcome(event_id=event_id, duplicate=True)
        return Outcome(
            event_id=event_id,
            sessions=list(result["sessions"] or []),  # cjson writes an empty list as {}
            dropped=list(result["dropped"] or []),
            skipped=skipped,
        )

    def _execute(self, args: list[bytes], payload_key: str, payload: bytes) -> bytes:
        """Run start.lua: alone, or in one MULTI after SETting the payload it may keep."""
        for _ in range(2):
            try:
                if not payload_key:
                    return self._line.call("EVALSHA", self._sha, 0, *args)
                _, result = self._line.transaction(("SET", payload_key, payload, "EX", keys.EVENT_TTL),
                                                   ("EVALSHA", self._sha, 0, *args))
                if isinstance(result, Exception):
                    raise result
                return result
            except NoScriptError:  # a new, restarted or flushed Redis; the retry rewrites the same payload key
                self.conn.script_load(SCRIPT)
        if payload_key:
            self.conn.delete(payload_key)  # SET without its script: nothing may point at it
        raise redis.RedisError("Redis keeps forgetting the start script; try again")
