"""Per-session limits, enforced by the kernel: hostile sessions beside an honest one.

Every hog is bounded by itself (a few thousand sleepers, 2 GB, 400 MB at most), far past the
small limits set here, so a limit that does not hold fails the test instead of the host."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from routinely.routines import catalog
from routinely.records import sessions
from routinely.config import ConfigError, Settings
from routinely.routine_file import ApplyError
from routinely.firing.start import Firing, fire_one
from tests.support import (worker_command, SYSTEM_PYTHON, host_processes_with, log_text, needs_root, needs_sandbox, reachable_folder,
                           run_sessions)
from workers.sandbox.bounds import enforcer

pytestmark = needs_sandbox
needs_cgroups = pytest.mark.skipif(enforcer("auto").kind == "rlimit", reason="no writable cgroup (v2 or v1) on this host")


@pytest.fixture
def world():
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3 for the hog agents")
    with reachable_folder("rly-lim-", agents=("hog.py",)) as base:
        yield base


def env_for(redis_server, world, **extra):
    return {"PATH": os.environ["PATH"], "HOME": str(world), "REDIS_URL": redis_server.url,
            "ROUTINELY_DATA_DIR": str(world / "data"), "ROUTINELY_AGENT": f"{SYSTEM_PYTHON} {world / 'agents' / 'hog.py'}",
            "ROUTINELY_SANDBOX_PATHS": str(world / "agents"), "ROUTINELY_SESSION_USERS": "off", **extra}


def routine(name, hog, marker, limits=None):
    environment = {"env": {"HOG": hog, "HOG_MARKER": marker}}
    if limits:
        environment["limits"] = limits
    return {"name": name, "account": "a", "prompt": "p", "triggers": [{"api": {}}], "environment": environment}


def session_cgroups(name: str) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"**/routinely/{name}") if p.is_dir()] if name else []


@needs_cgroups
def test_three_hostile_sessions_end_with_their_limit_and_the_honest_one_finishes(conn, settings, redis_server, world, client):
    markers = {kind: f"{60 + i}.{uuid.uuid4().int % 10**6}" for i, kind in enumerate(("pids", "memory", "disk", "none"))}
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        routine("pids-hog", "pids", markers["pids"], {"pids": 64}),
        routine("memory-hog", "memory", markers["memory"], {"memory_mb": 128}),
        routine("disk-hog", "disk", markers["disk"], {"disk_mb": 40}),
        routine("honest", "none", markers["none"]),
    ]}, time.time())
    ids = {name: fire_one(settings, conn, name, Firing(kind="manual"))["id"]
           for name in ("pids-hog", "memory-hog", "disk-hog", "honest")}
    began = time.monotonic()
    workers = [subprocess.Popen(worker_command(), env=env_for(redis_server, world),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(4)]
    for w in workers:
        w.wait(180)
        assert w.returncode == 0, w.stderr.read()  # every worker carried on to the end
    took = time.monotonic() - began
    got = {name: sessions.get(conn, settings, sid) for name, sid in ids.items()}

    assert got["honest"]["status"] == "succeeded", log_text(conn, ids["honest"])
    assert "honest: done" in log_text(conn, ids["honest"])
    assert got["memory-hog"]["status"] == "failed" and got["memory-hog"]["reason"] == "out of memory (limit 128 MB)", \
        log_text(conn, ids["memory-hog"])
    assert "hog: allocated everything" not in log_text(conn, ids["memory-hog"])
    assert got["disk-hog"]["status"] == "failed" and got["disk-hog"]["reason"] == "disk limit exceeded", \
        log_text(conn, ids["disk-hog"])
    assert "hog: wrote everything" not in log_text(conn, ids["disk-hog"])
    pids_log = log_text(conn, ids["pids-hog"])
    assert "hog: fork refused: [Errno 11] Resource temporarily unavailable" in pids_log  # the agent's own error
    assert "routinely: the session reached its pids limit (64): " in pids_log
    started = int(pids_log.split("hog: started ")[1].split(",")[0])
    assert 10 < started < 64

    for name, sid in ids.items():
        raw = sessions.get_raw(conn, sid)
        assert host_processes_with(markers[name.split("-")[0] if name != "honest" else "none"]) == []
        assert raw[b"sandbox_cgroup"] and session_cgroups(raw[b"sandbox_cgroup"].decode()) == []
        use = got[name]["resources"]
        assert set(use) == {"memory_peak_mb", "cpu_seconds", "pids_peak", "disk_mb"}
    assert got["pids-hog"]["resources"]["pids_peak"] == 64
    assert got["memory-hog"]["resources"]["memory_peak_mb"] >= 120
    assert got["disk-hog"]["resources"]["disk_mb"] >= 40  # stopped at the limit (rounded to 0.1 MB)
    assert got["honest"]["resources"]["cpu_seconds"] > 0 and got["honest"]["resources"]["pids_peak"] >= 3
    assert "resources" in got["honest"] and got["honest"]["resources"]["memory_peak_mb"] > 1
    page = client.get(f"/sessions/{ids['disk-hog']}").data.decode()
    assert "peak memory" in page and f"disk {got['disk-hog']['resources']['disk_mb']} MB" in page
    assert client.get(f"/api/sessions/{ids['honest']}").get_json()["resources"] == got["honest"]["resources"]
    print(f"four sessions side by side: {took:.1f} s")


def test_the_rlimit_fallback_bounds_memory_per_process_and_says_so(conn, settings, redis_server, world):
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        routine("memory-hog", "memory", "1.5", {"memory_mb": 256})]}, time.time())
    sid = fire_one(settings, conn, "memory-hog", Firing(kind="manual"))["id"]
    done = run_sessions(env_for(redis_server, world, ROUTINELY_CGROUPS="off"))
    notice = "routinely: session limits fall back to rlimits (no writable cgroup v2 or v1 here)"
    assert notice in done.stderr  # at worker start-up
    log = log_text(conn, sid)
    assert notice in log  # and in the session's log
    assert "MemoryError" in log and "hog: allocated everything" not in log
    got = sessions.get(conn, settings, sid)
    assert got["status"] == "failed" and not got.get("sandbox_cgroup")
    assert got["resources"]["memory_peak_mb"] is None and got["resources"]["disk_mb"] >= 0


@needs_root
def test_the_rlimit_fallback_bounds_processes_per_session_user(conn, settings, redis_server, world):
    marker = f"55.{uuid.uuid4().int % 10**6}"
    catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [
        routine("pids-hog", "pids", marker, {"pids": 32})]}, time.time())
    sid = fire_one(settings, conn, "pids-hog", Firing(kind="manual"))["id"]
    run_sessions(env_for(redis_server, world, ROUTINELY_CGROUPS="off", ROUTINELY_SESSION_USERS="on"))
    log = log_text(conn, sid)
    assert "hog: fork refused" in log, log
    assert int(log.split("hog: started ")[1].split(",")[0]) < 32
    assert host_processes_with(marker) == []


def test_limits_in_the_routine_file_are_checked(conn):
    base = {"name": "r", "account": "a", "prompt": "p", "triggers": [{"api": {}}]}
    for limits, message in (({"memory": 5}, "unknown limit 'memory'"), ({"pids": 2}, "pids must be a whole number of at least 8"),
                            ({"cpus": "lots"}, "cpus must be a number"), ({"disk_mb": 1.5}, "disk_mb must be a whole number"),
                            ("big", "environment.limits must be a mapping")):
        with pytest.raises(ApplyError, match=message):
            catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [{**base, "environment": {"limits": limits}}]}, time.time())
    assert conn.keys("*routine*") == []  # nothing was stored
    catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [
        {**base, "environment": {"limits": {"memory_mb": 512, "cpus": 0.5}}}]}, time.time())


def test_service_limits_are_checked_and_routines_override_them():
    from workers.sandbox.bounds import limits_for

    base = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    settings = Settings.from_env({**base, "ROUTINELY_SESSION_LIMITS": "memory_mb=8192, pids=2048"})
    assert settings.session_limits == {"memory_mb": 8192, "pids": 2048}
    assert limits_for({"limits": {"pids": 100}}, settings.session_limits) == \
        type(limits_for({}, {}))(memory_mb=8192, cpus=2, pids=100, disk_mb=10240)
    assert limits_for({}, {}).memory_mb == 4096
    for bad, message in (("memory_mb", "key=value pairs"), ("ram=5", "unknown limit 'ram'"), ("pids=0", "pids must be")):
        with pytest.raises(ConfigError, match=message):
            Settings.from_env({**base, "ROUTINELY_SESSION_LIMITS": bad})
    with pytest.raises(ConfigError, match="ROUTINELY_CGROUPS takes auto, v2, v1 or off"):
        Settings.from_env({**base, "ROUTINELY_CGROUPS": "v3"})
