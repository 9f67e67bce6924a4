"""Stopping a worker or `routinely up` with a session running (issue #29): the shutdown grace is
honoured whole — an echo of the stop never shortens it, a person's second signal does — and a
session the grace cuts short is queued again when it did nothing outside, failed with what it
did otherwise. A worker whose Redis is gone as it stops still stops.

Real processes throughout; every wait follows a condition, bounded by the grace the test sets
plus a margin for a busy machine. (The plain requeue through `up` is
tests/system/test_faults.py::test_sigterm_to_up_queues_a_session_that_did_nothing_outside_again_after_the_grace.)
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import redis
from rq.registry import StartedJobRegistry

from routinely.storage import jobs
from routinely.records import sessions
from routinely.firing.start import Firing, fire_one
from tests.support import (worker_command, SLEEPER, apply_reporting_routine, assert_job_settled, assert_nothing_left, base_env, free_port,
                           log_text, settings_for, spawn, stop_process, wait_for)
from workers.liveness import ECHO_SECONDS, StopSignals
from workers.reaper import reap
from workers.worker import REDIS_WAIT_SECONDS


MARGIN = 30  # seconds a busy machine may add to any wait below

# exits 0 after a few seconds: a session that ends on its own within the grace
BRIEF = """import time
print("agent: started", flush=True)
time.sleep(4)
print("agent: done", flush=True)
"""

# pushes a branch through its push door (forwarded to the remote), then sleeps past any grace
PUSH_THEN_SLEEP = """import os, subprocess, time
repo = os.environ["ROUTINELY_REPOS"].split()[0]
def git(*args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
with open(os.path.join(repo, "note.txt"), "w") as f:
    f.write("note")
git("add", "note.txt")
git("-c", "user.name=a", "-c", "user.email=a@example.com", "commit", "-qm", "note")
git("push", "origin", "HEAD:refs/heads/claude/stop")
print("agent: pushed", flush=True)
time.sleep(600)
"""


def agent(tmp_path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return f"{sys.executable} {path}"


def test_a_signal_is_a_stop_an_echo_or_now():
    s = StopSignals()
    assert s.kind(signal.SIGTERM, 100.0) == "stop"
    assert s.kind(signal.SIGTERM, 100.0 + ECHO_SECONDS / 2) == "echo"  # a supervisor and its manager both sent it
    assert s.kind(signal.SIGINT, 500.0) == "echo"  # the terminal's Ctrl-C beside a supervisor's SIGTERM, however late
    assert s.kind(signal.SIGTERM, 100.0 + ECHO_SECONDS) == "now"  # a person's second SIGTERM
    assert s.kind(signal.SIGQUIT, 100.1) == "now"
    ctrl_c = StopSignals()
    assert ctrl_c.kind(signal.SIGINT, 0.0) == "stop"
    assert ctrl_c.kind(signal.SIGTERM, 0.3) == "echo"
    assert ctrl_c.kind(signal.SIGINT, 0.4) == "now"  # Ctrl-C twice: a terminal sends one per press
    assert StopSignals().kind(signal.SIGQUIT, 0.0) == "now"


def test_up_stopped_in_a_sessions_first_seconds_lets_it_end_on_its_own(own_redis, remotes_with_octo_api, tmp_path):
    settings = settings_for(own_redis.url, tmp_path)
    conn = redis.Redis.from_url(own_redis.url)
    apply_reporting_routine(conn, tmp_path)
    first = fire_one(settings, conn, "r", Firing(kind="manual"))
    queued = fire_one(settings, conn, "r", Firing(kind="manual"))
    grace = 10
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url, ROUTINELY_AGENT=agent(tmp_path, "brief", BRIEF),
                   ROUTINELY_SHUTDOWN_GRACE_SECONDS=str(grace))
    env.pop("PUBLIC_URL")
    up = spawn(["up", "--port", str(free_port()), "--workers", "1"], env, tmp_path / "up.log")
    try:
        assert wait_for(lambda: "agent: started" in log_text(conn, first["id"]), timeout=60)
        up.send_signal(signal.SIGTERM)
        up.send_signal(signal.SIGTERM)  # an echo (a service manager and a supervisor), or merged with the first
        assert up.wait(grace + 10 + MARGIN) == 0
    finally:
        stop_process(up)
    got = sessions.get(conn, settings, first["id"])
    log = log_text(conn, first["id"])
    # it ended on its own within the grace, or (a machine so busy it did not) was queued again: never failed
    assert got["status"] in ("succeeded", "queued"), (got, log)
    if got["status"] == "succeeded":
        assert "agent: done" in log and "worker shut down" not in log
    lines = (tmp_path / "up.log").read_text()
    assert f"routinely worker: stopping (SIGTERM); running sessions get {grace} s" in lines
    assert "ending running sessions now" not in lines
    assert lines.count("routinely worker: stopping") == 1  # `up` told its worker once
    assert sessions.get(conn, settings, queued["id"])["status"] == "queued"  # no new job once stopping
    assert_nothing_left(settings, first["id"])


def test_a_session_that_pushed_is_failed_with_what_it_did(own_redis, remotes_with_octo_api, tmp_path):
    settings = settings_for(own_redis.url, tmp_path)
    conn = redis.Redis.from_url(own_redis.url)
    apply_reporting_routine(conn, tmp_path)
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    grace = 1
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url, ROUTINELY_SHUTDOWN_GRACE_SECONDS=str(grace),
                   ROUTINELY_AGENT=agent(tmp_path, "pusher", PUSH_THEN_SLEEP))
    worker = spawn(["worker"], env, tmp_path / "worker.log")
    try:
        assert wait_for(lambda: "agent: pushed" in log_text(conn, s["id"]), timeout=60)
        assert "refs/heads/claude/stop" in remotes_with_octo_api.refs("octo/api")  # it reached the real remote
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(grace + 10 + MARGIN) == 0
    finally:
        stop_process(worker)
    got = sessions.get(conn, settings, s["id"])
    assert got["status"] == "failed", (got, log_text(conn, s["id"]))
    assert got["reason"] == "worker shut down; done outside: pushed refs/heads/claude/stop to octo/api"
    assert "routinely: worker shut down; done outside: pushed refs/heads/claude/stop to octo/api" in log_text(conn, s["id"])
    assert_nothing_left(settings, s["id"])
    assert_job_settled(conn, settings, s["id"])  # failed in RQ too, not put back on the queue
    assert s["id"] not in jobs.queue(conn, settings.queue_name).get_job_ids()


def test_an_echo_never_shortens_the_grace_and_a_person_s_second_signal_does(own_redis, remotes_with_octo_api, tmp_path):
    settings = settings_for(own_redis.url, tmp_path)
    conn = redis.Redis.from_url(own_redis.url)
    apply_reporting_routine(conn, tmp_path)
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    grace = 120  # far longer than the test: only SIGQUIT can end the session in time
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url, ROUTINELY_AGENT=SLEEPER,
                   ROUTINELY_SHUTDOWN_GRACE_SECONDS=str(grace))
    log = tmp_path / "worker.log"
    worker = spawn(["worker"], env, log)
    try:
        assert wait_for(lambda: "agent: sleeping" in log_text(conn, s["id"]), timeout=60)
        worker.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "routinely worker: stopping (SIGTERM)" in log.read_text())
        # (a SIGTERM again within ECHO_SECONDS is an echo too — the unit test above; here the
        # kernel may merge two sent back to back, and a busy machine may delay either)
        worker.send_signal(signal.SIGINT)  # a terminal's Ctrl-C beside a supervisor's SIGTERM: the same stop
        assert wait_for(lambda: "SIGINT: the same stop" in log.read_text())
        assert worker.poll() is None and sessions.get(conn, settings, s["id"])["status"] == "running"
        worker.send_signal(signal.SIGQUIT)  # a person: end it now
        assert worker.wait(10 + MARGIN) == 0  # long before the grace
    finally:
        stop_process(worker)
    assert "SIGQUIT: ending running sessions now" in log.read_text()
    got = sessions.get(conn, settings, s["id"])
    assert got["status"] == "queued", (got, log_text(conn, s["id"]))  # it did nothing outside
    assert jobs.queue(conn, settings.queue_name).get_job_ids() == [s["id"]]
    assert s["id"] not in StartedJobRegistry(settings.queue_name, connection=conn,
                                             serializer=jobs.SERIALIZER).get_job_ids()
    done = subprocess.run(worker_command(),
                          env={**env, "ROUTINELY_AGENT": "true"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sessions.get(conn, settings, s["id"])["status"] == "succeeded"  # another worker ran it
    assert_job_settled(conn, settings, s["id"])


def test_a_worker_whose_redis_goes_away_as_it_stops_still_stops(own_redis, remotes_with_octo_api, tmp_path):
    settings = settings_for(own_redis.url, tmp_path)
    conn = redis.Redis.from_url(own_redis.url)
    apply_reporting_routine(conn, tmp_path)
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    grace = 1
    env = base_env(tmp_path, remotes_with_octo_api, REDIS_URL=own_redis.url, ROUTINELY_AGENT=SLEEPER,
                   ROUTINELY_SHUTDOWN_GRACE_SECONDS=str(grace))
    log = tmp_path / "worker.log"
    worker = spawn(["worker"], env, log)
    try:
        assert wait_for(lambda: "agent: sleeping" in log_text(conn, s["id"]), timeout=60)
        own_redis.halt()
        worker.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert worker.wait(grace + REDIS_WAIT_SECONDS + MARGIN) == 1
        assert time.monotonic() - began >= grace  # the grace still held
    finally:
        stop_process(worker)
        if own_redis.proc.poll() is not None:
            own_redis.start()
    assert "is unreachable and the shutdown grace is over: exiting" in log.read_text()
    conn = redis.Redis.from_url(own_redis.url)
    # what it could not write is the reaper's once Redis is back
    assert sessions.get(conn, settings, s["id"])["status"] == "running"
    assert wait_for(lambda: reap(conn, time.time() + 60, settings.data_dir) == [s["id"]], timeout=MARGIN)
    assert sessions.get(conn, settings, s["id"])["status"] == "failed"
    assert_nothing_left(settings, s["id"])
