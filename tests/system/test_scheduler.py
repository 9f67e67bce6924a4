"""The scheduler: due runs fire once through admission, restarts catch up once, one leader."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from routinely.routines import catalog
from routinely.storage import keys
from routinely.routines.schedules import stagger_seconds
from tests.support import Clock, redis_snapshot
from workers.scheduler import GRACE_SECONDS, Scheduler, field

UTC = timezone.utc
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC).timestamp()
STAGGER = stagger_seconds("alice/daily")



def setup(conn, schedule=None, **routine):
    spec = {"name": "daily", "account": "alice", "prompt": "Morning report.",
            "triggers": [{"schedule": schedule or {"preset": "daily", "time": "09:00", "timezone": "UTC"}}], **routine}
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "enterprise"}], "routines": [spec]}, None)
    return catalog.load(conn).routines["alice/daily"]


def sessions_made(conn):
    return conn.zcard(keys.SESSIONS)


def nine(day: int) -> float:
    return datetime(2026, 11, day, 9, 0, tzinfo=UTC).timestamp() + STAGGER


def test_a_due_run_fires_once_with_its_time_and_stagger(client, conn, settings):
    routine = setup(conn)
    clock = Clock(T0)
    s = Scheduler(conn, settings.with_(clock=clock))
    assert s.tick() == [] and sessions_made(conn) == 0  # a new schedule waits for its first run
    assert float(conn.hget(keys.SCHEDULES, field(routine, routine.schedules[0]))) == nine(24)
    clock.t = nine(24) - 1
    assert s.tick() == []
    clock.t = nine(24)
    done = s.tick()
    assert len(done) == 1 and len(done[0]["sessions"]) == 1
    session = client.get(f"/api/sessions/{done[0]['sessions'][0]['id']}").get_json()
    first = datetime.fromtimestamp(nine(24), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert session["trigger"] == {"kind": "schedule", "scheduled_for": first, "previous_run_at": ""}  # the first run
    clock.t += 30
    assert s.tick() == [] and sessions_made(conn) == 1
    assert float(conn.hget(keys.SCHEDULES, field(routine, routine.schedules[0]))) == nine(25)
    event = client.get("/api/events").get_json()[0]
    assert event["kind"] == "schedule" and event["routine"] == "alice/daily"
    clock.t = nine(25)
    second = s.tick()[0]["sessions"][0]["id"]
    assert client.get(f"/api/sessions/{second}").get_json()["trigger"]["previous_run_at"] == first


def test_previous_run_at_skips_a_dropped_run_and_forgets_removed_routines(conn, settings):
    setup(conn, rate_limit={"events": 1, "per_seconds": 7 * 86400})
    clock = Clock(T0)
    s = Scheduler(conn, settings.with_(clock=clock))
    s.tick()
    clock.t = nine(24)
    assert len(s.tick()[0]["sessions"]) == 1
    clock.t = nine(25)
    assert s.tick()[0]["dropped"][0]["reason"] == "routine_rate_limit"  # did not run: not a "previous run"
    assert conn.hget(keys.LAST_SCHEDULED_RUN, "alice/daily").decode().startswith("2026-11-24T09:")
    catalog.apply(conn, {"accounts": [{"name": "alice"}], "routines": []}, None)
    s.tick()
    assert conn.hgetall(keys.LAST_SCHEDULED_RUN) == {}


def test_two_schedulers_racing_for_the_same_tick_make_one_session(conn, settings):
    setup(conn)
    clock = Clock(T0)
    Scheduler(conn, settings.with_(clock=clock)).tick()
    clock.t = nine(24) + 1
    racers = [Scheduler(conn, settings.with_(clock=clock)) for _ in range(4)]
    barrier = threading.Barrier(len(racers))
    results = []

    def go(s):
        barrier.wait()
        results.extend(s.tick())  # no lease taken: the run's claim alone must hold

    threads = [threading.Thread(target=go, args=(s,)) for s in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sessions_made(conn) == 1
    assert sorted(r["duplicate"] for r in results) == [False] + [True] * (len(results) - 1)


def test_only_one_scheduler_leads_and_a_dead_leaders_lease_is_taken_over(conn, settings):
    a = Scheduler(conn, settings, lease_seconds=0.3)
    b = Scheduler(conn, settings, lease_seconds=0.3)
    assert a.lead() and not b.lead()
    assert a.lead()  # renewal
    time.sleep(0.4)  # a stopped renewing
    assert b.lead() and not a.lead()


def test_a_restart_after_downtime_catches_up_once(client, conn, settings):
    routine = setup(conn)
    clock = Clock(T0)
    Scheduler(conn, settings.with_(clock=clock)).tick()  # next run persisted: 09:00 + stagger
    clock.t = nine(24) + 20 * 60  # down from 08:00 to 09:20
    restarted = Scheduler(conn, settings.with_(clock=clock))
    done = restarted.tick()
    assert len(done) == 1 and sessions_made(conn) == 1
    clock.t += 60
    assert restarted.tick() == [] and sessions_made(conn) == 1
    # the state write was lost (killed between firing and saving): the claim stops a second session
    conn.hset(keys.SCHEDULES, field(routine, routine.schedules[0]), nine(24))
    again = restarted.tick()
    assert again[0]["duplicate"] is True and sessions_made(conn) == 1


def test_hourly_downtime_fires_the_latest_run_once_and_records_the_rest_missed(client, conn, settings):
    setup(conn, schedule={"preset": "hourly", "minute": 0, "timezone": "UTC"})
    clock = Clock(T0 - 30 * 60)
    Scheduler(conn, settings.with_(clock=clock)).tick()  # next: 08:00 + stagger
    clock.t = T0 + 3 * 3600 + 10 * 60 + STAGGER  # back at 11:10: 08:00, 09:00, 10:00, 11:00 were due
    done = Scheduler(conn, settings.with_(clock=clock)).tick()
    assert len(done) == 1 and sessions_made(conn) == 1
    assert done[0]["run_at"] == T0 + 3 * 3600 + STAGGER  # the 11:00 run
    missed = [e for e in client.get("/api/events").get_json() if e["event"] == "schedule.missed"]
    assert len(missed) == 1 and missed[0]["routine"] == "alice/daily" and missed[0]["sessions"] == []


def test_a_run_past_the_grace_period_is_recorded_missed_not_fired(client, conn, settings):
    setup(conn)
    clock = Clock(T0)
    Scheduler(conn, settings.with_(clock=clock)).tick()
    clock.t = nine(24) + GRACE_SECONDS + 60
    assert Scheduler(conn, settings.with_(clock=clock)).tick() == []
    assert sessions_made(conn) == 0
    assert client.get("/api/events").get_json()[0]["event"] == "schedule.missed"


def test_schedule_ticks_go_through_admission_and_drops_are_recorded(client, conn, settings):
    routine = setup(conn, schedule={"preset": "hourly", "minute": 0, "timezone": "UTC"},
                    rate_limit={"events": 1, "per_seconds": 86400})
    clock = Clock(T0 - 60)
    s = Scheduler(conn, settings.with_(clock=clock))
    s.tick()
    clock.t = T0 + STAGGER
    assert len(s.tick()[0]["sessions"]) == 1
    clock.t += 3600
    assert s.tick()[0]["dropped"][0]["reason"] == "routine_rate_limit"
    assert client.get("/api/events").get_json()[0]["dropped"][0]["reason"] == "routine_rate_limit"


def test_at_schedules_fire_once(conn, settings):
    at = datetime(2026, 12, 1, 9, 0).isoformat(timespec="minutes")
    routine = setup(conn, schedule={"at": at, "timezone": "UTC"})
    clock = Clock(T0)
    s = Scheduler(conn, settings.with_(clock=clock))
    s.tick()
    clock.t = datetime(2026, 12, 1, 9, 0, tzinfo=UTC).timestamp() + STAGGER
    assert len(s.tick()) == 1
    assert float(conn.hget(keys.SCHEDULES, field(routine, routine.schedules[0]))) == -1
    clock.t += 10 * 86400
    assert s.tick() == [] and sessions_made(conn) == 1


def _scheduler_process(env):
    return subprocess.Popen([sys.executable, "-m", "cli", "scheduler"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(predicate, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_real_scheduler_processes_fire_a_due_run_once_and_take_over(conn, redis_server, tmp_path):
    routine = setup(conn, schedule={"preset": "hourly", "minute": 0, "timezone": "UTC"})
    f = field(routine, routine.schedules[0])
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_server.url,
           "ROUTINELY_SCHEDULER_LEASE_SECONDS": "1.5"}
    conn.hset(keys.SCHEDULES, f, time.time() - 5)  # persisted before a restart: due now
    procs = [_scheduler_process(env), _scheduler_process(env)]
    try:
        _wait(lambda: sessions_made(conn) == 1)
        time.sleep(2)
        assert sessions_made(conn) == 1  # two schedulers, one session
        leader = conn.get(keys.SCHEDULER_LEASE).decode()
        pid = int(leader.split(":")[1])
        os.kill(pid, signal.SIGKILL)
        conn.hset(keys.SCHEDULES, f, time.time() - 2)  # another run comes due while the leader is dead
        _wait(lambda: sessions_made(conn) == 2)
        assert int(conn.get(keys.SCHEDULER_LEASE).decode().split(":")[1]) != pid
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(10)


def run_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True)


def test_cli_schedule_list_update_and_run(conn, redis_server, tmp_path):
    setup(conn, schedule={"preset": "weekdays", "time": "09:00", "timezone": "Asia/Tokyo"})
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_server.url}
    rows = json.loads(run_cli(env, "schedule", "list", "--json").stdout)
    assert rows[0]["name"] == "daily" and rows[0]["account"] == "alice" and rows[0]["stagger_seconds"] == STAGGER
    nxt = datetime.fromisoformat(rows[0]["next_run_at"].replace("Z", "+00:00"))
    local = (nxt.timestamp() - STAGGER)
    as_tokyo = datetime.fromtimestamp(local, ZoneInfo("Asia/Tokyo"))
    assert as_tokyo.strftime("%H:%M") == "09:00" and as_tokyo.weekday() < 5 and nxt.timestamp() > time.time()

    before = redis_snapshot(conn)
    bad = run_cli(env, "schedule", "update", "daily", "--cron", "*/15 * * * *")
    assert bad.returncode == 1 and "can run 15 minutes apart" in bad.stderr
    assert redis_snapshot(conn) == before

    ok = run_cli(env, "schedule", "update", "daily", "--cron", "30 6 * * *", "--timezone", "Europe/Paris", "--json")
    assert ok.returncode == 0, ok.stderr
    updated = json.loads(ok.stdout)
    assert updated["schedules"][0]["cron"] == "30 6 * * *" and updated["schedules"][0]["timezone"] == "Europe/Paris"
    paris = datetime.fromtimestamp(datetime.fromisoformat(updated["next_run_at"].replace("Z", "+00:00")).timestamp() - STAGGER,
                                   ZoneInfo("Europe/Paris"))
    assert paris.strftime("%H:%M") == "06:30"
    ok = run_cli(env, "schedule", "update", "daily", "--preset", "weekly", "--day", "fri", "--time", "17:00")
    assert ok.returncode == 0, ok.stderr

    ran = run_cli(env, "schedule", "run", "daily", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["trigger"]["kind"] == "schedule"
    assert run_cli(env, "schedule", "run", "nope").returncode == 1
