"""The start plan built in Python without Redis; the admission decision alone; the script
checked against both (every key it touches declared, its verdicts equal to `decide`)."""
from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest

from routinely import admission, catalog, jobs, keys, start_plan
from routinely.routine_file import parse_config
from routinely.start import Firing, Starter
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
    fields = dict(zip(plan.session_fields(s)[::2], plan.session_fields(s)[1::2]))
    assert fields["status"] == "queued" and fields["event_id"] == "event_1" and fields["account"] == "alice"
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


CHECKS = admission.Checks(
    routine=admission.Window("r", 3, 10, 9), account=admission.Window("a", 5, 10, 8),
    cap=admission.Window("c", 2, 10, 100), extra_usage=False, drops_key="d")


@pytest.mark.parametrize("counts,verdict", [
    ((0, 0, 0), admission.Verdict(None)),
    ((2, 4, 1), admission.Verdict(None)),
    ((3, 0, 0), admission.Verdict("routine_rate_limit", 9)),
    ((3, 5, 2), admission.Verdict("routine_rate_limit", 9)),  # the first window in order wins
    ((0, 5, 0), admission.Verdict("account_rate_limit", 8)),
    ((0, 0, 2), admission.Verdict("daily_cap", 100)),
])
def test_the_admission_decision_alone(counts, verdict):
    assert admission.decide(CHECKS, counts) == verdict


def test_past_the_cap_extra_usage_is_metered_not_dropped():
    extra = admission.Checks(CHECKS.routine, CHECKS.account, CHECKS.cap, True, "d")
    assert admission.decide(extra, (0, 0, 9)) == admission.Verdict(None, metered=True)
    assert admission.decide(extra, (3, 0, 9)).reason == "routine_rate_limit"


@pytest.mark.parametrize("extra_usage", [False, True])
def test_the_script_decides_as_decide_does(conn, settings, extra_usage):
    """Every combination of counters around each limit: the script's verdict, its counts
    and its drop record agree with admission.decide."""
    settings = settings.with_(clock=Clock(NOW))
    catalog.save(conn, config(extra_usage=extra_usage))
    starter = Starter(conn, settings)
    cat = starter.cache.get(conn)
    routine = cat.routines["alice/review"]
    checks = admission.checks(routine, cat.accounts["alice"], NOW)
    for counts in itertools.product((2, 3), (6, 7), (4, 5)):
        for window, count in zip(checks.windows, counts):
            conn.set(window.key, count)
        conn.delete(checks.drops_key)
        want = admission.decide(checks, counts)
        outcome = starter.fire(Firing(kind="manual"), lambda c: [c.routines["alice/review"]])
        after = [int(conn.get(w.key)) for w in checks.windows]
        if want.reason is None:
            assert [s["metered"] for s in outcome.sessions] == [want.metered], counts
            assert after == [c + 1 for c in counts] and not outcome.dropped
        else:
            assert outcome.sessions == [] and after == list(counts), counts
            assert outcome.dropped == [{"routine": "review", "reason": want.reason, "retry_after": want.retry_after}]
            assert int(conn.hget(checks.drops_key, want.reason)) == 1


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
    # the records are the plan's (the field names are the script's: both must agree)
    fields = plan.session_fields(plan.sessions[0])
    stored = {k.decode(): v.decode() for k, v in conn.hgetall(keys.session(plan.sessions[0].id)).items()}
    assert stored == {**dict(zip(fields[::2], fields[1::2])), "metered": "0"}
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
    from routinely import events

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
