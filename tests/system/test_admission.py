"""Admission: per-routine and per-account windows, daily caps by plan, exact under concurrency."""
from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from app import create_app
from routinely.routines import catalog
from routinely.storage import keys
from routinely.firing.start import Firing, Starter
from tests.support import ADMIN_TOKEN, Clock, SECRET, body_of, delivery_headers, fixture, free_port, redis_snapshot
from tests.support import ROOT_DIR


ROOT = ROOT_DIR
TOKYO = ZoneInfo("Asia/Tokyo")



def setup(conn, routines, account=None):
    account = {"name": "alice", "plan": "enterprise", "timezone": "Asia/Tokyo", **(account or {})}
    full = [{"account": "alice", "prompt": "p", "repositories": ["Codertocat/Hello-World"],
             "triggers": [{"api": {}}, {"github": {"events": ["pull_request"]}}], **r} for r in routines]
    catalog.apply(conn, {"accounts": [account], "routines": full}, time.time())


def fire(starter, name):
    outcome = starter.fire(Firing(kind="manual"), lambda cat: [cat.find(name)])
    return outcome.sessions, outcome.dropped


def test_two_hundred_concurrent_deliveries_against_a_cap_of_ten_on_two_hosts(conn, redis_server, tmp_path):
    setup(conn, [{"name": "capped", "rate_limit": {"events": 10, "per_seconds": 3600}}],
          {"rate_limit": {"events": 1000, "per_seconds": 3600}})
    env = {**os.environ, "REDIS_URL": redis_server.url, "GITHUB_WEBHOOK_SECRET": SECRET, "WEB_CONCURRENCY": "2",
           "ROUTINELY_ADMIN_TOKEN": ADMIN_TOKEN,
           "ROUTINELY_DATA_DIR": str(tmp_path)}
    ports = [free_port(), free_port()]
    hosts = [subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"),
                               "--bind", f"127.0.0.1:{port}", "app:create_app()"], env=env, cwd=ROOT) for port in ports]
    try:
        for port in ports:
            for _ in range(100):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/healthz")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
        body = body_of(fixture("pull_request.opened.json"))

        def deliver(i: int) -> int:
            c = http.client.HTTPConnection("127.0.0.1", ports[i % 2], timeout=30)
            c.request("POST", "/webhooks/github", body, delivery_headers("pull_request", body, delivery=str(uuid.uuid4())))
            return c.getresponse().status

        with ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(deliver, range(200)))
        assert statuses == [202] * 200
        assert conn.zcard(keys.SESSIONS) == 10
        assert conn.llen("rq:queue:routinely") == 10
        events = create_app_client(redis_server, tmp_path).get("/api/events?limit=1000").get_json()
        assert len(events) == 200
        assert sum(len(e["sessions"]) for e in events) == 10
        drops = [d for e in events for d in e["dropped"]]
        assert len(drops) == 190 and {d["reason"] for d in drops} == {"routine_rate_limit"}
        routines = create_app_client(redis_server, tmp_path).get("/api/routines").get_json()
        assert routines[0]["drops"]["routine_rate_limit"] == 190
        assert routines[0]["drops"]["retry_at"] > routines[0]["drops"]["last_at"]
    finally:
        for host in hosts:
            host.terminate()
            host.wait(10)


def create_app_client(redis_server, tmp_path):
    from routinely.config import Settings

    client = create_app(Settings(redis_url=redis_server.url, data_dir=tmp_path, webhook_secret=SECRET,
                                 admin_token="test-admin-token")).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-token"
    return client


def test_a_window_resets_after_per_seconds(conn, settings):
    setup(conn, [{"name": "r", "rate_limit": {"events": 2, "per_seconds": 60}}])
    clock = Clock(1_800_000_000.0)  # a window boundary: 1_800_000_000 is divisible by 60
    starter = Starter(conn, settings.with_(clock=clock))
    assert len(fire(starter, "r")[0]) == 1
    clock.t += 30
    assert len(fire(starter, "r")[0]) == 1
    sessions, dropped = fire(starter, "r")
    assert sessions == [] and dropped[0]["reason"] == "routine_rate_limit" and dropped[0]["retry_after"] == 30
    clock.t += 30  # the next window
    assert len(fire(starter, "r")[0]) == 1
    ttl = conn.ttl(keys.rate_window("routine", "alice/r", 60, int(clock.t // 60)))
    assert 0 < ttl <= 61  # counters expire with their window


def test_the_daily_cap_follows_the_accounts_calendar_day(conn, settings):
    setup(conn, [{"name": "r", "rate_limit": {"events": 100, "per_seconds": 60}}],
          {"plan": "pro", "rate_limit": {"events": 100, "per_seconds": 60}})
    before_midnight = datetime(2026, 11, 24, 23, 58, tzinfo=TOKYO).timestamp()  # 14:58 UTC
    clock = Clock(before_midnight)
    starter = Starter(conn, settings.with_(clock=clock))
    for _ in range(5):  # pro: 5 a day
        assert len(fire(starter, "r")[0]) == 1
        clock.t += 1
    sessions, dropped = fire(starter, "r")
    assert sessions == [] and dropped[0]["reason"] == "daily_cap"
    assert 100 <= dropped[0]["retry_after"] <= 120  # until 00:00 in Tokyo
    clock.t = datetime(2026, 11, 25, 0, 0, 1, tzinfo=TOKYO).timestamp()  # 15:00 UTC: still the 24th in UTC
    assert len(fire(starter, "r")[0]) == 1
    assert int(conn.get(keys.daily_count("alice", "2026-11-25"))) == 1
    assert 0 < conn.ttl(keys.daily_count("alice", "2026-11-25")) <= 2 * keys.DAY


def test_extra_usage_runs_past_the_cap_marked_metered(client, conn, settings):
    setup(conn, [{"name": "r"}], {"plan": "pro", "extra_usage": True})
    starter = Starter(conn, settings)
    made = [fire(starter, "r")[0][0] for _ in range(7)]
    assert [s["metered"] for s in made] == [False] * 5 + [True] * 2
    shown = client.get(f"/api/sessions/{made[-1]['id']}").get_json()
    assert shown["metered"] is True
    assert client.get(f"/api/sessions/{made[0]['id']}").get_json()["metered"] is False


def test_a_routine_drop_never_consumes_the_accounts_budget(conn, settings):
    setup(conn, [{"name": "a", "rate_limit": {"events": 1, "per_seconds": 3600}},
                 {"name": "b", "rate_limit": {"events": 10, "per_seconds": 3600}}],
          {"rate_limit": {"events": 2, "per_seconds": 3600}})
    starter = Starter(conn, settings.with_(clock=Clock(1_800_000_000.0)))
    assert len(fire(starter, "a")[0]) == 1
    for _ in range(5):
        assert fire(starter, "a")[1][0]["reason"] == "routine_rate_limit"
    assert len(fire(starter, "b")[0]) == 1  # the account still had one left
    assert fire(starter, "b")[1][0]["reason"] == "account_rate_limit"
    assert int(conn.get(keys.daily_count("alice", "2027-01-15"))) == 2  # drops consumed no daily run either


def test_one_delivery_admits_each_matching_routine_on_its_own(client, conn):
    setup(conn, [{"name": "open", "rate_limit": {"events": 5, "per_seconds": 3600}},
                 {"name": "full", "rate_limit": {"events": 1, "per_seconds": 3600}}])
    body = body_of(fixture("pull_request.opened.json"))
    client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    resp = client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    got = resp.get_json()
    assert [s["routine"] for s in got["sessions"]] == ["open"]
    assert got["dropped"] == [{"routine": "full", "reason": "routine_rate_limit"}]
    assert client.get("/api/events").get_json()[0]["dropped"][0]["reason"] == "routine_rate_limit"


@pytest.mark.parametrize("limit", [{"events": 0, "per_seconds": 60}, {"events": 5, "per_seconds": 0},
                                   {"events": "ten", "per_seconds": 60}, {"events": 5}])
def test_bad_limits_are_refused_at_apply(conn, limit):
    from routinely.routine_file import ApplyError

    before = redis_snapshot(conn)
    with pytest.raises(ApplyError, match="rate_limit"):
        setup(conn, [{"name": "r", "rate_limit": limit}])
    with pytest.raises(ApplyError, match="rate_limit"):
        setup(conn, [{"name": "r"}], {"rate_limit": limit})
    assert redis_snapshot(conn) == before
