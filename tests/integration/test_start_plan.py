"""The start plan built in Python without Redis; the admission rule, which lives in the
script alone, driven through the script with a table of cases; every key it touches declared."""
from __future__ import annotations

import itertools
import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest

from routinely.firing import admission, start_plan
from routinely.routines import catalog
from routinely.storage import jobs, keys
from routinely.records import sessions
from routinely.routine_file import parse_config
from routinely.firing.start import Firing, Starter
from routinely.when import iso
from tests.support import Clock, redis_snapshot

NOW = datetime(2026, 11, 24, 23, 59, 30, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()  # 30 s before Tokyo's midnight


def config(**account):
    return parse_config({
        "accounts": [{"name": "alice", "plan": "pro", "timezone": "Asia/Tokyo",
                      "rate_limit": {"events": 7, "per_seconds": 60}, **account}],
        "routines": [
            {"name": "review", "account": "alice", "prompt": "p", "repositories": ["Codertocat/Hello-World"],
             "rate_limit": {"events": 3, "per_seconds": 3600}, "timeout_minutes": 30,
             "triggers": [{"api": {}}, {"github": {"events": ["pull_request"]}}]},
            {"name": "sleepy", "account": "alice", "prompt": "p", "paused": True, "triggers": [{"api": {}}]},
        ]}, NOW)


def counting_ids():
    counter = itertools.count(1)
    return lambda kind: f"{kind}_{next(counter)}"


def test_the_plan_is_built_without_redis():
    cat = catalog.Catalog(config(), version=4)
    firing = Firing(kind="github", event="pull_request.opened", delivery="d-1", repository="Codertocat/Hello-World",
                    payload=b"{}", claim=keys.delivery("d-1"), filter_fields={"base_branch": "master"})
    plan = start_plan.build(firing, cat, [cat.routines["alice/review"], cat.routines["alice/sleepy"]], NOW, counting_ids())
    assert plan.version == 4 and plan.claim == "rly:delivery:d-1" and plan.claim_ttl == keys.DELIVERY_TTL
    assert plan.event_id == "event_1" and plan.skipped == ("sleepy",) and plan.keeps_payload
    (s,) = plan.sessions
    assert (s.id, s.routine, s.routine_key) == ("session_2", "review", "alice/review")
    assert s.job_timeout == 30 * 60 + start_plan.JOB_MARGIN_SECONDS and s.job_description == "alice/review github"
    assert s.account == "alice" and plan.created == iso(NOW)
    assert plan.event["delivery"] == "d-1" and plan.event["event"] == "pull_request.opened"
    assert plan.event["filter_fields"] == {"base_branch": "master"}
    c = s.checks
    window = int(NOW // 3600)
    assert c.routine == admission.Window(keys.rate_window("routine", "alice/review", 3600, window), 3,
                                         int((window + 1) * 3600 - NOW) + 1, int((window + 1) * 3600 - NOW))
    assert c.account.key == keys.rate_window("account", "alice", 60, int(NOW // 60)) and c.account.max == 7
    assert c.cap.key == keys.daily_count("alice", "2026-11-24") and c.cap.max == 5 and c.cap.retry_after == 30
    assert c.extra_usage is False and c.drops_key == keys.drops("alice/review")


def test_an_unmatched_delivery_plans_no_session_and_keeps_no_body():
    cat = catalog.Catalog(config(), version=1)
    plan = start_plan.build(Firing(kind="github", event="push", payload=b"{}"), cat, [], NOW, counting_ids())
    assert plan.sessions == () and not plan.keeps_payload


# (routine window, account window, daily cap: each "at" its limit or below it; the account's
# spend today past its daily budget; extra usage) -> the script's verdict: a drop's reason, or
# "admitted" / "metered"
RULE = [
    (("", "", ""), False, False, "admitted"),
    (("at", "", ""), False, False, "routine_rate_limit"),
    (("at", "at", "at"), True, True, "routine_rate_limit"),  # the first window in order wins
    (("", "at", ""), False, False, "account_rate_limit"),
    (("", "at", "at"), True, True, "account_rate_limit"),
    (("", "", ""), True, False, "daily_budget"),  # the budget comes after the rate windows...
    (("", "", "at"), True, True, "daily_budget"),  # ...and before the cap: extra usage does not buy past it
    (("", "", "at"), False, False, "daily_cap"),
    (("", "", "at"), False, True, "metered"),  # past the cap, extra usage runs on, marked
]


@pytest.mark.parametrize("at,over_budget,extra_usage,verdict", RULE)
def test_the_admission_rule_in_the_script(conn, settings, at, over_budget, extra_usage, verdict):
    """The rule exists once, in start.lua: each case sets the counters and the spend, fires
    once, and reads the verdict, the counters and the drop record the script left."""
    catalog.save(conn, config(extra_usage=extra_usage, daily_budget_usd=2.0))
    starter = Starter(conn, settings.with_(clock=Clock(NOW)))
    cat = starter.cache.get(conn)
    checks = admission.checks(cat.routines["alice/review"], cat.accounts["alice"], NOW)
    counts = [window.max if mark == "at" else window.max - 1 for window, mark in zip(checks.windows, at)]
    for window, count in zip(checks.windows, counts):
        conn.set(window.key, count)
    conn.hset(checks.budget.key, "cost_usd", 2.0 if over_budget else 1.99)
    outcome = starter.fire(Firing(kind="manual"), lambda c: [c.routines["alice/review"]])
    after = [int(conn.get(w.key)) for w in checks.windows]
    if verdict in ("admitted", "metered"):
        assert [s["metered"] for s in outcome.sessions] == [verdict == "metered"] and not outcome.dropped
        assert after == [c + 1 for c in counts] and not conn.exists(checks.drops_key)
    else:
        retry = {w: window.retry_after for w, window in zip(admission.REASONS, checks.windows)}
        retry["daily_budget"], retry["daily_cap"] = checks.budget.retry_after, checks.cap.retry_after
        assert outcome.sessions == [] and after == counts
        assert outcome.dropped == [{"routine": "review", "reason": verdict, "retry_after": retry[verdict]}]
        assert int(conn.hget(checks.drops_key, verdict)) == 1


def test_the_layout_is_declared_once_and_read_by_name():
    """Every slot encode fills is a name the script's header declares, in one order."""
    header = start_plan.lua_header()
    for prefix, names, first in (("K", start_plan.FIXED_KEY_NAMES, 1), ("KS", start_plan.SESSION_KEY_NAMES, 0),
                                 ("A", start_plan.FIXED_ARG_NAMES, 1), ("AS", start_plan.SESSION_ARG_NAMES, 0)):
        assert len(set(names)) == len(names)
        line = next(l for l in header.splitlines() if l.startswith(f"local {prefix}_{names[0]},"))
        assert line == (f"local {', '.join(f'{prefix}_{n}' for n in names)} = "
                        f"{', '.join(str(i) for i in range(first, first + len(names)))}")
    script = start_plan.SCRIPT
    assert script.startswith(header) and not re.search(r"(KEYS|ARGV)\[\d", script)  # no slot by its number
    code = re.sub(r"--[^\n]*", "", script[len(header):])
    used = set(re.findall(r"\b((?:K|KS|KR|A|AS|AR|AI)_[a-z_]+)\b", code))
    declared = set(re.findall(r"\b((?:K|KS|KR|A|AS|AR|AI)_[a-z_]+)\b", header))
    assert used <= declared, used - declared  # a name the script reads is one the layout declares
    with pytest.raises(ValueError, match="do not match the layout"):
        start_plan._slots(("a", "b"), {"a": 1})


def test_the_script_touches_only_the_keys_it_declares(conn, settings):
    catalog.save(conn, config(extra_usage=True))
    starter = Starter(conn, settings.with_(clock=Clock(NOW)))
    cat = starter.cache.get(conn)
    firing = Firing(kind="github", event="pull_request.opened", delivery="d-2", repository="Codertocat/Hello-World",
                    payload=b'{"x": 1}', claim=keys.delivery("d-2"), installations=[["set", "codertocat/hello-world", "9"]])
    plan = start_plan.build(firing, cat, [cat.routines["alice/review"]], NOW)
    declared, _ = start_plan.encode(plan, starter._job, settings.queue_name)
    before = redis_snapshot(conn)
    outcome = starter._apply(plan)
    assert len(outcome.sessions) == 1
    after = redis_snapshot(conn)
    changed = {k.decode() for k in set(after) | set(before) if after.get(k) != before.get(k)}
    assert changed <= set(declared) and keys.payload(plan.event_id) in declared
    assert {keys.session(plan.sessions[0].id), jobs.job_key(plan.sessions[0].id), keys.event(plan.event_id),
            keys.delivery("d-2"), keys.INSTALLATIONS} <= changed
    # the session record the script writes (its field names are the script's; routinely.records.sessions reads them)
    s = plan.sessions[0]
    stored = {k.decode(): v.decode() for k, v in conn.hgetall(keys.session(s.id)).items()}
    assert stored == {"id": s.id, "routine": "review", "routine_key": "alice/review", "account": "alice",
                      "trigger": plan.trigger, "event_id": plan.event_id, "status": "queued", "created_at": plan.created,
                      "chain_depth": "1", "metered": "0"}
    event = orjson.loads(conn.get(keys.event(plan.event_id)))
    assert event == {**plan.event, "duplicate": False, "sessions": [plan.sessions[0].id], "dropped": [], "skipped": []}
    assert 0 < conn.ttl(keys.event(plan.event_id)) <= keys.EVENT_TTL
    assert conn.get(keys.payload(plan.event_id)) == b'{"x": 1}' and conn.ttl(keys.payload(plan.event_id)) > 0


def test_the_job_the_script_writes_is_the_job_rq_would_write(conn, settings):
    catalog.save(conn, config())
    starter = Starter(conn, settings.with_(clock=Clock(NOW)))
    outcome = starter.fire(Firing(kind="api", text="hi"), lambda c: [c.routines["alice/review"]])
    sid = outcome.sessions[0]["id"]
    ours = jobs.queue(conn, settings.queue_name).fetch_job(sid)
    assert ours.func_name == jobs.RUN_SESSION and list(ours.args) == [] and ours.kwargs == {}
    assert ours.origin == settings.queue_name and ours.get_status() == "queued" and ours.timeout == 30 * 60 + 600
    assert ours.description == "alice/review api" and ours.result_ttl == jobs.RESULT_TTL
    assert ours.enqueued_at.timestamp() == pytest.approx(NOW, abs=0.001)
    theirs = jobs.queue(conn, "other").enqueue(jobs.RUN_SESSION, job_id="rq_made", job_timeout=ours.timeout,
                                               description=ours.description, result_ttl=jobs.RESULT_TTL,
                                               failure_ttl=jobs.FAILURE_TTL)
    theirs = jobs.queue(conn, "other").fetch_job("rq_made")
    same = ("func_name", "args", "kwargs", "timeout", "description", "result_ttl", "failure_ttl", "meta", "retries_left",
            "_dependency_ids", "allow_dependency_failures", "enqueue_at_front", "ttl", "worker_name", "group_id")
    assert {n: getattr(ours, n) for n in same} == {n: getattr(theirs, n) for n in same}


def test_an_event_recorded_as_a_hash_before_records_were_json_still_reads(conn):
    from routinely.records import events

    conn.hset(keys.event("evt_old"), mapping={"id": "evt_old", "kind": "github", "event": "push", "duplicate": "0",
                                              "received_at": "2026-11-24T00:00:00.000Z", "sessions": '["s1"]',
                                              "dropped": "[]", "skipped": "[]", "trigger": '{"kind": "github"}'})
    conn.zadd(keys.EVENTS, {"evt_old": 1})
    old = events.get(conn, "evt_old")
    assert old["sessions"] == ["s1"] and old["duplicate"] is False and old["event"] == "push"
    assert events.listing(conn) == [old]


def test_each_listing_index_is_trimmed_within_a_second_of_a_write_to_it(conn, settings):
    """Trims are once a second per process, but per index: a routine that fires rarely
    beside a busy one still has its own sessions index trimmed when it fires."""
    cfg = parse_config({"accounts": [{"name": "alice", "extra_usage": True}], "routines": [
        {"name": n, "account": "alice", "prompt": "p", "triggers": [{"api": {}}]} for n in ("busy", "rare")]}, NOW)
    catalog.save(conn, cfg)
    clock = Clock(NOW)
    starter = Starter(conn, settings.with_(clock=clock))
    old_ms = (NOW - keys.SESSIONS_KEPT - 60) * 1000
    for index in (keys.sessions_of("alice/busy"), keys.sessions_of("alice/rare"), keys.SESSIONS):
        conn.zadd(index, {"session_ancient": old_ms})
    fire = lambda name: starter.fire(Firing(kind="api", text="x"), lambda c: [c.routines[f"alice/{name}"]])  # noqa: E731
    fire("busy")  # trims the shared indexes and busy's own
    assert conn.zscore(keys.sessions_of("alice/busy"), "session_ancient") is None
    assert conn.zscore(keys.SESSIONS, "session_ancient") is None
    conn.zadd(keys.SESSIONS, {"session_ancient": old_ms})
    clock.t = NOW + 0.5
    fire("busy")  # within the second: nothing shared is trimmed again
    assert conn.zscore(keys.SESSIONS, "session_ancient") is not None
    fire("rare")  # its own index was never trimmed by this process: now it is
    assert conn.zscore(keys.sessions_of("alice/rare"), "session_ancient") is None
    clock.t = NOW + 1.5
    fire("busy")
    assert conn.zscore(keys.SESSIONS, "session_ancient") is None


# -- concurrency groups (routine_file.concurrency): the script's decision, driven by a table
REPO = "Codertocat/Hello-World"


def group_config(cancel_in_progress=False, debounce_seconds=0):
    return parse_config({
        "accounts": [{"name": "alice", "extra_usage": True, "rate_limit": {"events": 1000, "per_seconds": 60}}],
        "routines": [{"name": "review", "account": "alice", "prompt": "p", "repositories": [REPO],
                      "rate_limit": {"events": 1000, "per_seconds": 60},
                      "concurrency": {"group": "{repository}#{pull_request.number}",
                                      "cancel_in_progress": cancel_in_progress, "debounce_seconds": debounce_seconds},
                      "triggers": [{"github": {"events": ["pull_request"]}}]}]}, NOW)


def pr_firing(number=7):
    return Firing(kind="github", event="pull_request.synchronize", repository=REPO,
                  payload=orjson.dumps({"action": "synchronize", "pull_request": {"number": number}}))


def fire_pr(starter, number=7):
    (made,) = starter.fire(pr_firing(number), lambda c: [c.routines["alice/review"]]).sessions
    return made["id"]


def where(conn, settings, sid):
    """Where a session's job is: queue | scheduled | deferred | gone."""
    if sid.encode() in conn.lrange(jobs.queue_key(settings.queue_name), 0, -1):
        return "queue"
    if conn.zscore(jobs.scheduled_key(settings.queue_name), sid) is not None:
        return "scheduled"
    return (conn.hget(jobs.job_key(sid), "status") or b"gone").decode()


def status(conn, sid):
    return conn.hget(keys.session(sid), "status").decode()


# the group before the firing: its active session (none, queued, running, running and already
# canceled by an earlier firing, finished without a release) and a session waiting behind it;
# cancel_in_progress, debounce -> where the new session goes, which sessions it superseded, and
# whether the running one is flagged for cancel
GROUP_RULE = [
    ("", False, 0, "queue", [], False),
    ("", False, 5, "scheduled", [], False),
    ("queued", False, 0, "queue", ["active"], False),  # not started: replaced, only the newest waits
    ("queued", True, 5, "scheduled", ["active"], False),  # a debounce pushed out by the newer firing
    ("running", False, 0, "deferred", [], False),  # waits behind the running one
    ("running", True, 0, "deferred", ["active"], True),  # cancel_in_progress: the running one is canceled
    ("running+waiting", False, 0, "deferred", ["waiting"], False),  # only the newest waits
    # the firing that made the waiting one canceled the running one already: it is superseded once
    ("running+waiting", True, 0, "deferred", ["waiting"], True),
    ("succeeded+waiting", False, 0, "queue", ["waiting"], False),  # a finished holder holds nothing
]


@pytest.mark.parametrize("before,cancel,debounce,place,superseded,flagged", GROUP_RULE)
def test_the_concurrency_rule_in_the_script(conn, settings, before, cancel, debounce, place, superseded, flagged):
    catalog.save(conn, group_config(cancel, debounce))
    clock = Clock(NOW)
    starter = Starter(conn, settings.with_(clock=clock))
    sessions_before = {}
    if before:
        first, _, second = before.partition("+")
        active = sessions_before["active"] = fire_pr(starter)
        if first != "queued":
            assert sessions.transition(conn, active, ["queued"], status="running")
        if second:
            sessions_before["waiting"] = fire_pr(starter)
            assert where(conn, settings, sessions_before["waiting"]) == "deferred"
        if first == "succeeded":  # ended, and its release never ran (the reaper's failures do not release)
            assert sessions.transition(conn, active, ["running"], status="succeeded")
    drops_before = int(conn.hget(keys.drops("alice/review"), "superseded") or 0)
    clock.t = NOW + 1
    new = fire_pr(starter)
    assert where(conn, settings, new) == place and status(conn, new) == "queued"
    if place == "scheduled":
        assert conn.zscore(jobs.scheduled_key(settings.queue_name), new) == pytest.approx(NOW + 1 + debounce)
        assert conn.hget(keys.session(new), "start_at").decode() == iso(NOW + 1 + debounce)
    for role, sid in sessions_before.items():
        if role in superseded and not (role == "active" and flagged):
            assert status(conn, sid) == "canceled" and where(conn, settings, sid) == "gone"
            assert conn.hget(keys.session(sid), "superseded_by").decode() == new
    active = sessions_before.get("active")
    if flagged:
        assert conn.get(keys.session_cancel(active)) == b"1" and status(conn, active) == "running"
    elif active:
        assert not conn.exists(keys.session_cancel(active))
    assert int(conn.hget(keys.drops("alice/review"), "superseded") or 0) - drops_before == len(superseded)
    group = keys.concurrency_group("alice/review", f"{REPO}#7")
    holder, waiting = (v.decode() if v else None for v in conn.hmget(group, "active", "waiting"))
    assert (holder, waiting) == ((active, new) if place == "deferred" else (new, None))
    assert 0 < conn.ttl(group) <= keys.GROUP_TTL
    if superseded:  # the firing's event says whom it replaced
        event = orjson.loads(conn.get(keys.event(conn.hget(keys.session(new), "event_id").decode())))
        assert {s["session"] for s in event["superseded"]} == {sessions_before[r] for r in superseded}


def test_groups_are_per_rendered_group_and_per_routine(conn, settings):
    catalog.save(conn, group_config())
    starter = Starter(conn, settings.with_(clock=Clock(NOW)))
    one, other = fire_pr(starter, 7), fire_pr(starter, 8)
    assert where(conn, settings, one) == where(conn, settings, other) == "queue"
    assert conn.hget(keys.session(one), "group") == f"{REPO}#7".encode()


def test_a_group_that_changed_after_it_was_read_is_read_again(conn, settings, monkeypatch):
    """Another process's firing between the read and the script: the script writes nothing
    (no claim taken either) and the firing is planned again on the group as it is now."""
    from routinely.firing import start

    catalog.save(conn, group_config())
    starter = Starter(conn, settings.with_(clock=Clock(NOW)))
    other = Starter(conn, settings.with_(clock=Clock(NOW)))
    first = fire_pr(starter)
    reads = []
    real = start.read_groups

    def stale_once(c, plan):
        got = real(c, plan)
        reads.append(got)
        if len(reads) == 1:
            fire_pr(other)  # lands between this read and the script (its own read is reads[1])
        return got

    monkeypatch.setattr(start, "read_groups", stale_once)
    firing = pr_firing()
    firing.delivery, firing.claim = "d-9", keys.delivery("d-9")
    (made,) = starter.fire(firing, lambda c: [c.routines["alice/review"]]).sessions
    assert len(reads) == 3 and reads[0] == reads[1] != reads[2]
    assert status(conn, first) == "canceled" and where(conn, settings, made["id"]) == "queue"
    assert int(conn.hget(keys.drops("alice/review"), "superseded")) == 2


def test_the_script_touches_only_declared_keys_in_a_group(conn, settings):
    catalog.save(conn, group_config(cancel_in_progress=True))
    starter = Starter(conn, settings.with_(clock=Clock(NOW)))
    active = fire_pr(starter)
    sessions.transition(conn, active, ["queued"], status="running")
    waiting = fire_pr(starter)  # cancels it, and waits behind it
    cat = starter.cache.get(conn)
    plan = start_plan.build(pr_firing(), cat, [cat.routines["alice/review"]], NOW)
    from routinely.firing.start import read_groups

    declared, _ = start_plan.encode(plan, starter._job, settings.queue_name, read_groups(conn, plan))
    before = redis_snapshot(conn)
    assert len(starter._apply(plan).sessions) == 1
    after = redis_snapshot(conn)
    changed = {k.decode() for k in set(after) | set(before) if after.get(k) != before.get(k)}
    assert changed <= set(declared), changed - set(declared)
    assert {keys.session(waiting), jobs.job_key(waiting)} <= changed  # the one waiting was superseded


def test_release_hands_the_group_to_the_session_waiting(conn, settings):
    """The end of the group's session (workers.outbox's finish, a cancel) places the one
    waiting: on the queue, or among RQ's scheduled jobs while its debounce lasts."""
    from routinely.firing.start import release

    catalog.save(conn, group_config(debounce_seconds=30))
    clock = Clock(NOW)
    starter = Starter(conn, settings.with_(clock=clock))
    active = fire_pr(starter)
    assert jobs.promote_due(conn, settings.queue_name, NOW + 29) == pytest.approx(1)  # not yet: due in 1 s
    jobs.promote_due(conn, settings.queue_name, NOW + 30)
    assert where(conn, settings, active) == "queue"
    sessions.transition(conn, active, ["queued"], status="running")
    clock.t = NOW + 40
    waiting = fire_pr(starter)
    assert where(conn, settings, waiting) == "deferred"
    release(conn, active, NOW + 50)  # still running: nothing moves
    assert where(conn, settings, waiting) == "deferred"
    sessions.transition(conn, active, ["running"], status="succeeded")
    release(conn, active, NOW + 50)
    assert where(conn, settings, waiting) == "scheduled"  # its debounce runs to NOW + 70
    release(conn, active, NOW + 50)  # twice: harmless
    group = keys.concurrency_group("alice/review", f"{REPO}#7")
    assert conn.hget(group, "active").decode() == waiting and not conn.hexists(group, "waiting")
    assert sessions.cancel(conn, waiting, iso(NOW + 60)) == "canceled"  # a cancel releases too
    assert not conn.exists(group) and where(conn, settings, waiting) == "gone"


def test_a_reaped_session_hands_its_group_on(conn, settings):
    """A group's session whose worker died (the reaper fails it) must not hold the group: the
    one waiting behind it goes onto the queue."""
    from workers.reaper import reap

    catalog.save(conn, group_config())
    starter = Starter(conn, settings.with_(clock=Clock(time.time())))
    active = fire_pr(starter)
    sessions.transition(conn, active, ["queued"], status="running", host="elsewhere")
    waiting = fire_pr(starter)
    assert where(conn, settings, waiting) == "deferred"
    conn.zadd(keys.RUNNING, {active: 0})  # its last heartbeat: long ago
    assert reap(conn, time.time(), timeout=0) == [active]
    assert status(conn, active) == "failed" and where(conn, settings, waiting) == "queue"


def test_a_firing_whose_role_is_still_to_be_asked_joins_no_group(conn, settings):
    """A stranger's comment must not supersede the group's sessions before the worker knows it may fire."""
    from routinely.firing.roles import RoleCheck

    catalog.save(conn, group_config(cancel_in_progress=True))
    cat = catalog.load(conn)
    plan = start_plan.build(pr_firing(), cat, [cat.routines["alice/review"]], NOW,
                            role_checks={"alice/review": RoleCheck(roles=("write",), actor="stranger", repository=REPO,
                                                                   installation=None)})
    assert plan.sessions[0].group is None and plan.sessions[0].role_check
