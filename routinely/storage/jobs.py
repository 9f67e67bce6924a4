"""RQ, confined: the one module that knows RQ's keys, its job hash and its serializer.

Pinned to RQ 3 (pyproject: rq>=3,<4). The start script writes the job hash this module
builds (RQ's own `Job.to_dict()`, made once per process), the worker reads jobs through
`worker()`, and cancel goes through `cancel()`; nothing else imports rq.

Jobs are JSON (RQ's JSONSerializer), never pickle: a worker here never unpickles, so a
pickled job someone writes into the queue fails with a DeserializationError instead of
running code (tests/test_jobs.py writes one).

Why RQ and not a queue of our own: the worker, its failure registry and the runner's use of
`get_current_job` work as they are. The cost is that RQ's keys (`rq:job:<id>`, job ids
limited to [A-Za-z0-9_-]) cannot carry a Redis Cluster hash tag, so the start script's keys
share one node's keyspace, not one cluster slot; a queue of our own would go behind
`queue_key`/`JobTemplate`/`worker`/`cancel` without touching the start step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone

import redis
from rq import Queue, SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError, StopRequested  # noqa: F401 (StopRequested: workers.worker)
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from routinely.storage.wire import Segment


RUN_SESSION = "workers.run.run_session"
SERIALIZER = JSONSerializer
QUEUES_KEY = Queue.redis_queues_keys  # the set of queue keys RQ workers discover
RESULT_TTL = 86_400
FAILURE_TTL = 7 * 86_400


def queue_key(name: str) -> str:
    return Queue.redis_queue_namespace_prefix + name


def job_key(job_id: str) -> str:
    return Job.key_for(job_id)


# A session of a concurrency group (routine_file.concurrency) may be held back: "scheduled"
# until its debounce is over (in RQ's own ScheduledJobRegistry, by the time it may start), or
# "deferred" behind the group's running session (in no RQ list: routinely.firing.start.release
# places it). The start script writes these statuses; RQ reads them as its own.
SCHEDULED, DEFERRED = JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value


def scheduled_key(queue_name: str) -> str:
    """RQ's registry of the queue's scheduled jobs: zset job id -> epoch s it may start."""
    return ScheduledJobRegistry.key_template.format(queue_name)


_PROMOTE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('HSET', KEYS[3], 'status', 'queued', 'enqueued_at', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""


def promote_due(conn: redis.Redis, queue_name: str, now: float | None = None) -> float | None:
    """Move the queue's scheduled jobs whose time has come onto the queue (each once, however
    many workers ask); return the seconds until the next one is due, or None. RQ's own
    scheduler would do it too, but Routinely's workers run without it (workers.worker):
    `worker()` asks this before every wait for a job, and waits no longer than that."""
    now = time.time() if now is None else now
    registry, queue_ = scheduled_key(queue_name), queue_key(queue_name)
    for raw in conn.zrangebyscore(registry, "-inf", now):
        job_id = raw.decode()
        conn.eval(_PROMOTE, 3, registry, queue_, job_key(job_id), job_id, stamp(now))
    nxt = conn.zrange(registry, 0, 0, withscores=True)
    return max(0.0, nxt[0][1] - now) if nxt else None


class _ReadyQueue(Queue):
    """The queue as Routinely's workers read it: scheduled jobs that are due move in first, and a
    worker waiting for a job wakes when the next one is due."""

    @classmethod
    def dequeue_any(cls, queues, timeout, connection, *args, **kwargs):  # type: ignore[override]
        queues = list(queues)
        waits = [w for w in (promote_due(connection, q.name) for q in queues) if w is not None]
        if timeout is not None and waits:
            timeout = max(1, min(timeout, math.ceil(min(waits))))
        return super().dequeue_any(queues, timeout, connection, *args, **kwargs)


def stamp(now: float) -> str:
    """A time as RQ writes it in a job hash (rq.utils.utcformat, without strftime's cost)."""
    return datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobTemplate:
    """RQ's job hash for run_session, built once: every session's job differs only in its
    id (= the session id, so no argument is stored), times, timeout and description."""

    data: bytes  # zlib-compressed JSON of (func, instance, args, kwargs)
    fields: tuple[tuple[str, str], ...]  # every other non-empty field but the per-job ones

    @classmethod
    def build(cls, conn: redis.Redis, queue_name: str) -> "JobTemplate":
        job = Job.create(RUN_SESSION, id="template", connection=conn, status=JobStatus.QUEUED, origin=queue_name,
                         result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, serializer=SERIALIZER)
        job.enqueued_at = datetime.now(timezone.utc)
        mapping = job.to_dict()
        data = mapping.pop("data")
        for own in ("created_at", "enqueued_at", "timeout", "description"):
            mapping.pop(own, None)
        # RQ's Job.restore reads an absent field as it reads an empty one: write neither
        fields = tuple((k, v.value if isinstance(v, JobStatus) else str(v)) for k, v in mapping.items() if v != "")
        return cls(data, fields)

    def flat(self) -> list[str]:
        return [item for pair in self.fields for item in pair]

    @cached_property
    def packed(self) -> Segment:
        """The fields as RESP, packed once for every start script call."""
        return Segment(self.flat())


def worker(conn: redis.Redis, queue_name: str, cls: type[SimpleWorker] = SimpleWorker, **kwargs) -> SimpleWorker:
    """An RQ worker (`cls`: SimpleWorker or a subclass, as workers.worker's) on Routinely's
    queue that reads jobs as JSON only."""
    queue = _ReadyQueue(queue_name, connection=conn, serializer=SERIALIZER)
    return cls([queue], connection=conn, serializer=SERIALIZER, queue_class=_ReadyQueue, **kwargs)


def settle(conn: redis.Redis, job_id: str, succeeded: bool, reason: str = "") -> None:
    """Move a job out of "started" to finished or failed: for a session whose worker's own
    bookkeeping was cut off (Redis outage) or whose worker died (the reaper)."""
    try:
        job = Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
    except NoSuchJobError:
        return
    with conn.pipeline() as pipe:
        job.started_job_registry.remove_executions(job, pipeline=pipe)
        if succeeded:
            job.set_status(JobStatus.FINISHED, pipeline=pipe)
        else:
            record_job_failure(job, reason or "the session failed", pipe)
        pipe.execute()


def requeue(conn: redis.Redis, job_id: str) -> bool:
    """Put the job of a session that went back to queued (its worker shut down before it did
    anything outside) at the front of its queue again, out of "started": the next worker runs
    it. False when the job is gone (canceled meanwhile: nothing to run)."""
    try:
        job = Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
    except NoSuchJobError:
        return False
    with conn.pipeline() as pipe:
        job.started_job_registry.remove_executions(job, pipeline=pipe)
        pipe.execute()
    Queue(job.origin, connection=conn, serializer=SERIALIZER).enqueue_job(job, at_front=True)
    return True


def queue(conn: redis.Redis, queue_name: str) -> Queue:
    return Queue(queue_name, connection=conn, serializer=SERIALIZER)


def current_id() -> str:
    """The id of the job this worker is running (= its session id)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("not inside an RQ job")
    return job.id


def cancel(conn: redis.Redis, job_id: str) -> None:
    """Take a job off its queue and delete its hash (RQ's own Job.delete): a job that never
    runs would otherwise keep its hash forever."""
    try:
        job = Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
    except NoSuchJobError:
        return
    job.delete(remove_from_queue=True)
