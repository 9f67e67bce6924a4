"""Faults under real processes: Redis restarted or killed under a running session, a worker
SIGKILLed while its agent has a grandchild, `routinely up` stopped with a session running.

Each test checks the session's final status and reason, that no process of it survives
(through /proc; the conftest fixture checks the whole tree too), that no workspace or relay
is left, and that sessions queued behind the fault still run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from rq.registry import StartedJobRegistry

from routinely.storage import jobs
from routinely.records import sessions
from routinely.config import embedded_redis_url
from routinely.firing.start import Firing, fire_one
from workers.outbox import HEARTBEAT_EVERY
from workers.reaper import HEARTBEAT_TIMEOUT_SECONDS
from tests.support import (worker_command, AGENTS_DIR, SLEEPER, apply_reporting_routine, assert_job_settled, assert_nothing_left, base_env,
                           free_port, log_text, settings_for, spawn, stop_process, wait_for)

OUTLAST = f"{sys.executable} {AGENTS_DIR / 'outlast.py'}"  # waits for the file $GO, then exits 0


def test_a_redis_restart_under_a_running_session(own_redis, remotes_with_octo_api, tmp_path):
    settings = settings_for(own_redis.url, tmp_path)
    conn = redis.Redis.from_url(own_redis.url)
    go = tmp_path / "go"
    apply_reporting_routine(conn, tmp_path, environment={"env": {"GO": str(go)}})
    first = fire_one(settings, conn, "r", Firing(kind="manual"))
    queued = fire_one(settings, conn, "r", Firing(kind="manual"))
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url, ROUTINELY_AGENT=OUTLAST)
    worker = spawn(["worker"], env, tmp_path / "worker.log")
    try:
        assert wait_for(lambda: "agent: waiting" in log_text(conn, first["id"]))
        own_redis.halt()
        time.sleep(HEARTBEAT_EVERY * 1.5)  # the setting under test: a heartbeat fails meanwhile, the runner keeps it
        go.touch()  # the agent finishes while Redis is away: its outcome must wait, not vanish
        time.sleep(2)
        assert worker.poll() is None
        own_redis.start()
        conn = redis.Redis.from_url(own_redis.url)
        assert wait_for(lambda: sessions.get(conn, settings, first["id"])["status"] != "running", timeout=30)
        got = sessions.get(conn, settings, first["id"])
        assert got["status"] == "succeeded" and got["exit_code"] == 0 and "reason" not in got
        log = log_text(conn, first["id"])
        assert "agent: done" in log and "routinely: the agent exited with code 0" in log
        assert wait_for(lambda: sessions.get(conn, settings, queued["id"])["status"] == "succeeded", timeout=30)
        assert worker.poll() is None  # the worker rode through
        assert_nothing_left(settings, first["id"])
        assert_job_settled(conn, settings, first["id"])
    finally:
        assert stop_process(worker) == 0
    lines = (tmp_path / "worker.log").read_text().splitlines()
    outage = [line for line in lines if "Redis at" in line]
    assert len(outage) == 1, lines
    assert outage[0].startswith(f"routinely worker: Redis at {own_redis.url} was unreachable from ")
    assert "Traceback" not in "\n".join(lines)


def test_a_sigkilled_worker_with_a_grandchild_is_reaped_and_cleaned(own_redis, remotes_with_octo_api, tmp_path):
    settings = settings_for(own_redis.url, tmp_path)
    conn = redis.Redis.from_url(own_redis.url)
    apply_reporting_routine(conn, tmp_path)
    first = fire_one(settings, conn, "r", Firing(kind="manual"))
    queued = fire_one(settings, conn, "r", Firing(kind="manual"))
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url)
    scheduler = spawn(["scheduler"], env, tmp_path / "scheduler.log")
    worker = spawn(["worker"], {**env, "ROUTINELY_AGENT": SLEEPER}, tmp_path / "worker.log")
    try:
        assert wait_for(lambda: "agent: sleeping" in log_text(conn, first["id"]))
        agent, grandchild = map(int, (tmp_path / "report.json").read_text().split())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        # the scheduler's reaper: HEARTBEAT_TIMEOUT_SECONDS (10) without a heartbeat, a pass every 5 s
        assert wait_for(lambda: sessions.get(conn, settings, first["id"])["status"] != "running",
                        timeout=HEARTBEAT_TIMEOUT_SECONDS * 3)
        got = sessions.get(conn, settings, first["id"])
        assert got["status"] == "failed" and "stopped answering" in got["reason"]
        assert_nothing_left(settings, first["id"], agent, grandchild)
        assert_job_settled(conn, settings, first["id"])
        assert sessions.get(conn, settings, queued["id"])["status"] == "queued"
        worker = spawn(["worker", "--burst"], {**env, "ROUTINELY_AGENT": "true"}, tmp_path / "worker2.log")
        assert worker.wait(60) == 0
        assert sessions.get(conn, settings, queued["id"])["status"] == "succeeded"
    finally:
        stop_process(worker)
        assert stop_process(scheduler) == 0


def test_sigterm_to_up_queues_a_session_that_did_nothing_outside_again_after_the_grace(own_redis, remotes_with_octo_api,
                                                                                      tmp_path):
    settings = settings_for(own_redis.url, tmp_path)
    conn = redis.Redis.from_url(own_redis.url)
    apply_reporting_routine(conn, tmp_path)
    first = fire_one(settings, conn, "r", Firing(kind="manual"))
    queued = fire_one(settings, conn, "r", Firing(kind="manual"))
    grace = 1
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url, ROUTINELY_AGENT=SLEEPER,
                   ROUTINELY_SHUTDOWN_GRACE_SECONDS=str(grace))
    env.pop("PUBLIC_URL")
    up = spawn(["up", "--port", str(free_port()), "--workers", "1"], env, tmp_path / "up.log")
    try:
        assert wait_for(lambda: "agent: sleeping" in log_text(conn, first["id"]), timeout=60)
        agent, child = map(int, (tmp_path / "report.json").read_text().split())
        up.send_signal(signal.SIGTERM)
        # up waits the grace plus its margin (10 s) for the worker, then Redis
        assert up.wait(grace + 10 + 30) == 0
    finally:
        stop_process(up)
    got = sessions.get(conn, settings, first["id"])
    # the sleeper wrote nothing to GitHub and pushed nothing: queued again, not failed
    assert got["status"] == "queued" and got["started_at"] is None and got["finished_at"] is None, (got, log_text(conn, first["id"]))
    log = log_text(conn, first["id"])
    assert "routinely: worker shut down; the agent was stopped after the shutdown grace period" in log
    assert "it is queued again for the next worker" in log
    assert_nothing_left(settings, first["id"], agent, child)
    assert first["id"] not in StartedJobRegistry(settings.queue_name, connection=conn,
                                                 serializer=jobs.SERIALIZER).get_job_ids()
    queue_ids = jobs.queue(conn, settings.queue_name).get_job_ids()
    assert queue_ids[0] == first["id"] and queued["id"] in queue_ids  # back at the front; the other stayed
    assert sessions.get(conn, settings, queued["id"])["status"] == "queued"  # it stopped taking jobs
    done = subprocess.run(worker_command(),
                          env={**env, "ROUTINELY_AGENT": "true"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for s in (first, queued):  # another worker ran both to the end
        assert sessions.get(conn, settings, s["id"])["status"] == "succeeded"
        assert_job_settled(conn, settings, s["id"])


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append((int(entry.name), (entry / "cmdline").read_bytes().decode(errors="replace")))
        except (OSError, ValueError):
            continue
    return out


def test_up_restarts_its_redis_and_the_session_rides_through(remotes_with_octo_api, tmp_path):
    env = base_env(tmp_path, remotes_with_octo_api, ROUTINELY_AGENT=OUTLAST)
    env.pop("PUBLIC_URL")
    settings = settings_for(embedded_redis_url(tmp_path / "data"), tmp_path)
    up = spawn(["up", "--port", str(free_port()), "--workers", "1"], env, tmp_path / "up.log")
    try:
        conn = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        assert wait_for(lambda: _ping(conn), timeout=30)
        go = tmp_path / "go"
        apply_reporting_routine(conn, tmp_path, environment={"env": {"GO": str(go)}})
        first = fire_one(settings, conn, "r", Firing(kind="manual"))
        assert wait_for(lambda: "agent: waiting" in log_text(conn, first["id"]), timeout=60)
        time.sleep(1.5)  # the embedded Redis syncs its file every second
        [redis_pid] = [pid for pid, cmd in _children(up.pid) if "redis-server" in cmd]
        os.kill(redis_pid, signal.SIGKILL)
        time.sleep(1)
        go.touch()
        assert wait_for(lambda: _ping(conn), timeout=30)
        assert up.poll() is None
        assert wait_for(lambda: sessions.get(conn, settings, first["id"])["status"] != "running", timeout=30)
        got = sessions.get(conn, settings, first["id"])
        assert got["status"] == "succeeded" and got["exit_code"] == 0, got
        after = fire_one(settings, conn, "r", Firing(kind="manual"))  # the stack still runs sessions
        assert wait_for(lambda: sessions.get(conn, settings, after["id"])["status"] == "succeeded", timeout=60)
        assert_nothing_left(settings, first["id"])
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        stop_process(up)
    lines = (tmp_path / "up.log").read_text().splitlines()
    assert [line for line in lines if line.startswith("routinely: redis exited")] == [
        "routinely: redis exited with code -9; restarting it in 1 s"], lines
    # the worker rode through with one line for the outage; the scheduler too (it may not have
    # asked Redis anything while it was away); neither was restarted
    assert len([line for line in lines if line.startswith("routinely worker: Redis at")]) == 1, lines
    assert len([line for line in lines if line.startswith("routinely scheduler: Redis at")]) <= 1, lines
    assert not [line for line in lines if line.startswith(("routinely: worker1 exited", "routinely: scheduler exited"))]
    assert "Traceback" not in "\n".join(lines)


def _ping(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except redis.RedisError:
        return False


def test_up_stops_when_a_process_cannot_even_start(own_redis, remotes_with_octo_api, tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url)
    env.pop("PUBLIC_URL")
    try:
        up = spawn(["up", "--port", str(taken.getsockname()[1]), "--workers", "1"], env, tmp_path / "up.log")
        assert up.wait(60) == 1  # not restarted forever: a port in use is a configuration problem
    finally:
        taken.close()
    lines = (tmp_path / "up.log").read_text().splitlines()
    assert [line for line in lines if line.startswith("routinely: web exited")] == [
        "routinely: web exited with code 1 as it started; stopping"], lines
