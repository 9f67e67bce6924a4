"""Concurrency groups end to end: deliveries to two real web processes (gunicorn, as the
Procfile runs it) firing one group at once; the start script decides atomically across them.
The script's rule itself is a table in tests/test_start_plan.py."""
from __future__ import annotations

import http.client
import os
import threading
import time

import orjson
import pytest
from rq.exceptions import DequeueTimeout

from routinely.routines import catalog
from routinely.storage import jobs, keys
from routinely.records import sessions
from routinely.routine_file import parse_config
from routinely.when import iso
from tests.support import ADMIN_TOKEN, SECRET, body_of, delivery_headers, fixture, gunicorn
from workers.outage import Outage
from workers.outbox import Outbox

REPO = "Codertocat/Hello-World"
GROUP = keys.concurrency_group("alice/review", f"{REPO}#2")


@pytest.fixture
def webs(redis_server, tmp_path):
    """Two web processes on one Redis: each its own gunicorn, so the firings surely come from two."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_server.url,
           "ROUTINELY_DATA_DIR": str(tmp_path), "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_ADMIN_TOKEN": ADMIN_TOKEN}
    procs = [gunicorn("app:create_app()", env) for _ in range(2)]
    yield [port for _, port in procs]
    for proc, _ in procs:
        proc.terminate()
    for proc, _ in procs:
        proc.wait(10)


def apply(conn, **concurrency):
    catalog.save(conn, parse_config({
        "accounts": [{"name": "alice", "extra_usage": True}],
        "routines": [{"name": "review", "account": "alice", "prompt": "p", "repositories": [REPO],
                      "rate_limit": {"events": 100, "per_seconds": 60},
                      "concurrency": {"group": "{repository}#{pull_request.number}", **concurrency},
                      "triggers": [{"github": {"events": ["pull_request"]}}]}]}, time.time()))


def deliver(port: int) -> str:
    """One pull_request delivery to PR #2; the session it made."""
    body = body_of(fixture("pull_request.opened.json"))
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/webhooks/github", body=body, headers=delivery_headers("pull_request", body))
    answer = c.getresponse()
    assert answer.status == 202
    (made,) = orjson.loads(answer.read())["sessions"]
    return made["id"]


def at_once(ports: list[int], n: int) -> list[str]:
    """`n` deliveries sent together, spread over the web processes."""
    start = threading.Barrier(n)
    made: list[str] = []

    def one(port):
        start.wait()
        made.append(deliver(port))

    threads = [threading.Thread(target=one, args=(ports[i % len(ports)],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(made) == n
    return made


def take(conn, settings, sid):
    """What a worker does when it takes a session's job: off the queue, then running."""
    assert conn.lrem(jobs.queue_key(settings.queue_name), 0, sid) == 1
    assert sessions.transition(conn, sid, ["queued"], status="running")


def status(conn, sid):
    return conn.hget(keys.session(sid), "status").decode()


def superseded(conn) -> int:
    return int(conn.hget(keys.drops("alice/review"), "superseded") or 0)


def test_cancel_in_progress_leaves_one_session_running(conn, settings, webs):
    apply(conn, cancel_in_progress=True)
    first = deliver(webs[0])
    take(conn, settings, first)
    later = at_once(webs, 2)  # two more pushes to the PR, one through each web process
    assert conn.get(keys.session_cancel(first)) == b"1"  # flagged as routinely.records.sessions.cancel flags it
    (replaced,) = [s for s in later if status(conn, s) == "canceled"]
    (newest,) = [s for s in later if s != replaced]
    assert conn.hget(keys.session(replaced), "superseded_by").decode() == newest
    assert conn.hget(jobs.job_key(newest), "status") == b"deferred"  # waits until the canceled one has stopped
    assert superseded(conn) == 2
    # the first session's runner notices the flag and ends it: its group goes to the newest
    Outbox(conn, first, Outage("worker", settings.redis_url)).finish("canceled", finished_at=iso(time.time()))
    assert conn.lrange(jobs.queue_key(settings.queue_name), 0, -1) == [newest.encode()]
    take(conn, settings, newest)  # the next worker
    statuses = [status(conn, s) for s in [first, *later]]
    assert statuses.count("running") == 1 and statuses.count("canceled") == 2
    assert conn.hget(GROUP, "active").decode() == newest and not conn.hexists(GROUP, "waiting")


def test_debounce_coalesces_a_burst_into_one_session_on_the_newest_event(conn, settings, webs):
    apply(conn, debounce_seconds=2)
    made = at_once(webs, 5)
    waiting = [s for s in made if status(conn, s) == "queued"]
    assert len(waiting) == 1 and superseded(conn) == 4
    (last,) = waiting
    start_at = conn.zscore(jobs.scheduled_key(settings.queue_name), last)
    assert start_at is not None and conn.llen(jobs.queue_key(settings.queue_name)) == 0
    # the newest firing's session (the last the script took): every other was superseded by a later one
    assert all(conn.hget(keys.session(s), "superseded_by") for s in made if s != last)
    # a worker waiting for a job (its loop: RQ's wait, woken when the debounce is due, then
    # the next round moves it in) gets that one session, not before its time
    worker = jobs.worker(conn, settings.queue_name)
    got, deadline = None, time.time() + 30
    while got is None and time.time() < deadline:
        waited_from = time.time()
        try:
            got = worker.queue_class.dequeue_any(worker.queues, 10, connection=conn, serializer=jobs.SERIALIZER)
        except DequeueTimeout:
            assert time.time() - waited_from < 3  # woken when the debounce is due, not after RQ's long wait
    job, _ = got
    assert job.id == last and time.time() >= start_at
    assert not conn.zcard(jobs.scheduled_key(settings.queue_name))


def test_the_field_is_checked_when_applied_and_rendered_per_firing():
    """Names must be fields of the triggers' events (refused when applied, like a filter's);
    the trigger's group wins over the routine's; a firing whose event lacks a name joins none."""
    from routinely.firing import start_plan
    from routinely.routines.catalog import Catalog
    from routinely.routine_file import ApplyError
    from routinely.firing.start import Firing

    def routine(**extra):
        return {"accounts": [{"name": "alice"}], "routines": [
            {"name": "review", "account": "alice", "prompt": "p", "repositories": [REPO], **extra}]}

    for extra, words in [
        ({"concurrency": {"group": "{pul_request.number}"}, "triggers": [{"github": {"events": ["pull_request"]}}]},
         "names {pul_request.number}, which pull_request events do not have"),
        ({"concurrency": {"group": "{pull_request.number}"}, "triggers": [{"api": {}}]},
         "none of the triggers it applies to has an event"),
        ({"triggers": [{"github": {"events": ["push"], "concurrency": {"group": "{issue.number}"}}}]},
         "trigger 1 (github): concurrency.group names {issue.number}, which push events do not have"),
        ({"concurrency": {"group": "pr-{", "debounce_seconds": 5}, "triggers": [{"api": {}}]}, "a brace"),
        ({"concurrency": {"group": "x", "debounce_seconds": 3601}, "triggers": [{"api": {}}]},
         "debounce_seconds takes a whole number from 0 to 3600"),
    ]:
        with pytest.raises(ApplyError, match=words.replace("{", r"\{").replace("(", r"\(").replace(")", r"\)")):
            parse_config(routine(**extra), None)
    cfg = parse_config(routine(concurrency={"group": "{repository}#{pull_request.number}"}, triggers=[
        {"github": {"events": ["pull_request.labeled"], "concurrency": {"group": "label-{labels}", "cancel_in_progress": True}}},
        {"github": {"events": ["pull_request", "release"]}}, {"api": {}}]), None)
    cat = Catalog(cfg, 1)
    r = cat.routines["alice/review"]

    def group(event, payload, kind="github"):
        firing = Firing(kind=kind, event=event, repository=REPO, payload=orjson.dumps(payload) if payload else b"")
        (s,) = start_plan.build(firing, cat, [r], 1000.0).sessions
        return s.group and (s.group.name, s.group.cancel_in_progress)

    pr = {"pull_request": {"number": 5, "labels": [{"name": "a"}, {"name": "b"}]}}
    assert group("pull_request.labeled", pr) == ("label-a,b", True)  # the trigger's own
    assert group("pull_request.synchronize", pr) == (f"{REPO}#5", False)  # the routine's
    assert group("release.published", {"release": {}}) is None  # no pull_request.number: no group
    assert group(None, None, kind="api") is None
