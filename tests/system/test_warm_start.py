"""Warm start for real: git mirrors of local bare repositories, real RQ workers, real setup
scripts whose runs are counted from the session logs, real overlay mounts (as root)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from routinely.routines import catalog
from routinely.records import session_log, sessions
from routinely.config import ConfigError, Settings
from routinely.routine_file import ApplyError
from workers.warm.cache import SetupCache
from routinely.firing.start import Firing, fire_one
from tests.support import Remotes, git, reachable_folder, run_sessions, worker_command
from workers.warm.mirror import FRESH_SECONDS

AGENT = r"""
cd "${ROUTINELY_REPOS%% *}"  # the first checkout (where the agent starts)
echo "SEEN head=$(git rev-parse HEAD)"
echo "SEEN status=$(git status --porcelain | tr '\n' ' ')"
echo "SEEN files=$(ls -A | tr '\n' ' ')"
echo "SEEN built=$(cat built.txt 2>/dev/null || echo none)"
echo "SEEN home=$(cat "$HOME/.cache/tool" 2>/dev/null || echo none)"
echo "SEEN uid=$(id -u)"
if [ "$ROUTINELY_TEXT" = vandal ]; then
  rm -f README.md; echo poisoned > built.txt; echo junk > junk.txt; echo poisoned >> "$HOME/.cache/tool"
  git add -A && git commit -qm vandal && echo "SEEN committed=committed"
  rm -rf .git/objects/pack .git/refs
fi
exit 0
"""
SETUP = ('echo SETUP-RAN; sleep ${SETUP_SLEEP:-0}; echo "built from $(cat api/requirements.txt) by $ROUTINELY_SESSION_ID" > api/built.txt; '
         'mkdir -p "$HOME/.cache" && echo tool-1 > "$HOME/.cache/tool"')


@pytest.fixture
def world():
    """A data dir, remotes and outputs any session user can reach (pytest's tmp is root-only)."""
    with reachable_folder("rly-warm-") as base:
        for sub in ("github", "agent"):
            (base / sub).mkdir()
        (base / "agent").chmod(0o755)
        (base / "agent" / "agent.sh").write_text(AGENT)
        (base / "agent" / "agent.sh").chmod(0o644)
        yield base


@pytest.fixture
def remotes(world) -> Remotes:
    remotes = Remotes(world / "github")
    remotes.create("octo/api", files={"README.md": "# api\n", "requirements.txt": "lib==1\n", "src/app.py": "print(1)\n"})
    return remotes


@pytest.fixture
def env(redis_server, remotes, world) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "HOME": str(world / "home"), "LANG": "C.UTF-8",
        "REDIS_URL": redis_server.url, "GITHUB_GIT_URL": remotes.url,
        "ROUTINELY_DATA_DIR": str(world / "data"), "ROUTINELY_AGENT": f"sh {world / 'agent' / 'agent.sh'}",
        "ROUTINELY_SESSION_USERS": "off", "ROUTINELY_SANDBOX_PATHS": str(world / "agent"),  # the sandbox stays on
    }


def apply(conn, world, name="r", **environment):
    environment = {"setup": SETUP, **environment}
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "enterprise"}], "routines": [
        {"name": name, "account": "alice", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}],
         "rate_limit": {"events": 1000, "per_seconds": 3600}, "environment": environment}]}, time.time())


def session(conn, settings, env, text=None, routine="r", **extra) -> dict:
    """Run one session on a burst worker; its record, log and what the agent saw."""
    s = fire_one(settings, conn, routine, Firing(kind="api", text=text))
    run_sessions(env, **extra)
    return seen(conn, settings, env, s["id"])


def seen(conn, settings, env, sid) -> dict:
    """The session's record and log, and what its agent reported (its `SEEN name=value` lines)."""
    lines = session_log.read(conn, sid)[0]
    got = {"id": sid, "record": sessions.get(conn, settings, sid), "log": "\n".join(lines)}
    for line in lines:
        if line.startswith("SEEN "):
            name, _, value = line[5:].partition("=")
            got[name] = value.strip()
    return got


def commit(remotes: Remotes, files: dict[str, str]) -> str:
    work = remotes.root / "_work" / "octo/api"
    for name, text in files.items():
        (work / name).write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "change", cwd=work)
    git("push", "-q", str(remotes.root / "octo/api.git"), "HEAD:main", cwd=work)
    time.sleep(FRESH_SECONDS)  # a mirror fetched within this is reused as fresh
    return remotes.refs("octo/api")["refs/heads/main"]


def tree_digest(path: Path) -> str:
    """Every path, mode, owner and content under `path`: proof a snapshot did not change."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            st = os.lstat(full)
            h.update(f"{os.path.relpath(full, path)} {st.st_mode} {st.st_uid} {st.st_size}\n".encode())
            if os.path.isfile(full) and not os.path.islink(full):
                h.update(Path(full).read_bytes())
    return h.hexdigest()


def snapshots(world: Path) -> list[Path]:
    folder = world / "data" / "cache" / "snapshots"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def setup_runs(*sessions_) -> int:
    return sum(s["log"].count("SETUP-RAN") for s in sessions_)


def test_a_second_session_reuses_mirror_and_setup_and_sees_the_new_head(conn, settings, env, remotes, world, client):
    apply(conn, world, maintenance="echo MAINTENANCE-RAN")
    first = session(conn, settings, env)
    assert first["record"]["status"] == "succeeded", first["log"]
    assert "mirror of octo/api created in" in first["log"] and "no cached setup for key" in first["log"]
    assert "setup result cached as key" in first["log"] and "MAINTENANCE-RAN" not in first["log"]
    head = commit(remotes, {"NEW.md": "pushed between the sessions\n"})

    second = session(conn, settings, env)
    assert second["record"]["status"] == "succeeded", second["log"]
    assert setup_runs(first, second) == 1
    assert "mirror of octo/api fetched in" in second["log"]
    assert "setup cached (key " in second["log"] and "MAINTENANCE-RAN" in second["log"]
    assert f"{first['head'][:7]}→{head[:7]}" in second["log"]
    # the agent sees setup's result and the default branch as it is now
    assert second["built"] == f"built from lib==1 by {first['id']}"
    assert second["head"] == head and "NEW.md" in second["files"].split()
    assert second["status"] == first["status"] == "?? built.txt"
    assert "setup cached" in second["record"]["warm_start"]
    page = client.get(f"/sessions/{second['id']}").data.decode()
    assert 'id="warm_start"' in page and "setup cached (key" in page


def test_what_an_agent_does_never_reaches_what_the_next_session_starts_from(conn, settings, env, remotes, world):
    apply(conn, world)
    first = session(conn, settings, env)
    [snapshot] = snapshots(world)
    before = tree_digest(snapshot)
    mirror = world / "data" / "mirrors" / "octo__api.git"
    mirror_before = tree_digest(mirror)

    vandal = session(conn, settings, env, text="vandal")
    assert vandal["record"]["status"] == "succeeded" and vandal.get("committed") == "committed", vandal["log"]
    third = session(conn, settings, env)
    assert setup_runs(first, vandal, third) == 1
    assert tree_digest(snapshot) == before and tree_digest(mirror) == mirror_before
    assert third["built"] == f"built from lib==1 by {first['id']}"
    assert third["head"] == first["head"] and third["status"] == "?? built.txt"
    assert {"README.md", "built.txt", "src"} <= set(third["files"].split()) and "junk.txt" not in third["files"]
    assert not (world / "data" / "workspaces" / vandal["id"]).exists()
    assert not list((world / "data" / "layers").glob("session_*/"))


def test_a_changed_lock_file_or_setup_script_runs_setup_again(conn, settings, env, remotes, world):
    apply(conn, world)
    runs = [session(conn, settings, env)]
    runs.append(session(conn, settings, env))
    assert setup_runs(*runs) == 1
    commit(remotes, {"README.md": "# api, edited\n"})  # not a lock file: still a hit
    runs.append(session(conn, settings, env))
    assert setup_runs(*runs) == 1
    commit(remotes, {"requirements.txt": "lib==2\n"})
    runs.append(session(conn, settings, env))
    assert setup_runs(*runs) == 2 and runs[-1]["built"].startswith("built from lib==2")
    apply(conn, world, setup=SETUP + "; echo v2")
    runs.append(session(conn, settings, env))
    assert setup_runs(*runs) == 3
    apply(conn, world, setup=SETUP + "; echo v2", cache_key_files=["README.md"])
    runs.append(session(conn, settings, env))
    assert setup_runs(*runs) == 4  # a new key: the files it names changed
    entries = SetupCache(world / "data").entries()
    apply(conn, world, cache=False)
    off = [session(conn, settings, env), session(conn, settings, env)]
    assert setup_runs(*off) == 2 and "setup cached" not in off[1]["log"] and "cached as key" not in off[0]["log"]
    assert [e.key for e in SetupCache(world / "data").entries()] == [e.key for e in entries]
    assert all(s["record"]["status"] == "succeeded" for s in runs + off)


def test_an_expired_entry_runs_setup_again(conn, settings, env, world):
    apply(conn, world, cache_ttl_hours=0.0003)  # about a second
    first = session(conn, settings, env)
    time.sleep(1.2)
    second = session(conn, settings, env)
    assert setup_runs(first, second) == 2
    assert len(snapshots(world)) == 1  # the expired one was replaced and deleted
    time.sleep(1.2)
    apply(conn, world, name="other")  # any session's end drops entries past their ttl
    session(conn, settings, env, routine="other")
    assert [e.routine for e in SetupCache(world / "data").entries()] == ["alice/other"]


def test_eviction_keeps_the_cache_under_its_cap(conn, settings, env, world):
    cap_gb = 0.0008  # ~860 kB: two snapshots of ~350 kB fit, three do not
    big = SETUP + "; head -c 300000 /dev/urandom > api/big.bin"
    ran = []
    for name in ("r1", "r2", "r3", "r4"):
        apply(conn, world, name=name, setup=big)
        ran.append(session(conn, settings, env, routine=name, ROUTINELY_CACHE_MAX_GB=str(cap_gb)))
    cache = SetupCache(world / "data")
    kept = cache.entries()
    sizes = [e.size_bytes for e in kept]
    assert all(s and s > 300_000 for s in sizes) and sum(sizes) <= cap_gb * 1024 ** 3
    assert [e.routine for e in kept] and "alice/r1" not in [e.routine for e in kept]  # least recently used went first
    assert "alice/r4" in [e.routine for e in kept]
    assert len(snapshots(world)) == len(kept)  # evicted snapshots are gone from disk
    cli = subprocess.run([sys.executable, "-m", "cli", "cache", "list", "--json"], env=env,
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert sorted(r["routine"] for r in json.loads(cli.stdout)) == sorted(e.routine for e in kept)
    cleared = subprocess.run([sys.executable, "-m", "cli", "cache", "clear", "r4"], env=env,
                             capture_output=True, text=True)
    assert cleared.stdout.strip() == "cleared 1 cached setup(s)"
    assert "alice/r4" not in [e.routine for e in cache.entries()] and len(snapshots(world)) == len(kept) - 1


def test_two_concurrent_cold_sessions_never_corrupt_the_snapshot(conn, settings, env, world):
    apply(conn, world, env={"SETUP_SLEEP": "1"})
    ids = [fire_one(settings, conn, "r", Firing(kind="api", text="vandal"))["id"] for _ in range(2)]
    workers = [subprocess.Popen(worker_command(), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    for w in workers:
        assert w.wait(120) == 0
    pair = [seen(conn, settings, env, sid) for sid in ids]
    assert all(s["record"]["status"] == "succeeded" for s in pair), [s["log"] for s in pair]
    assert 1 <= setup_runs(*pair) <= 2
    third = session(conn, settings, env)
    assert setup_runs(*pair, third) == setup_runs(*pair)
    maker = third["built"].rsplit(" ", 1)[1]
    assert maker in ids and third["built"] == f"built from lib==1 by {maker}"
    assert third["status"] == "?? built.txt" and "README.md" in third["files"].split()
    assert len(snapshots(world)) == 1  # the losing snapshot was deleted once its session ended


def test_settings_and_routine_file_reject_bad_cache_keys(conn):
    with pytest.raises(ConfigError, match="ROUTINELY_CACHE_MAX_GB must be a number of gigabytes"):
        Settings.from_env({"ROUTINELY_CACHE_MAX_GB": "lots", "ROUTINELY_DATA_DIR": "/tmp/x"})
    assert Settings.from_env({"ROUTINELY_CACHE_MAX_GB": "0.5", "ROUTINELY_DATA_DIR": "/tmp/x"}).cache_max_gb == 0.5
    version = conn.get("rly:routines:version")
    for bad, message in (({"cache": "yes"}, "environment.cache takes true or false"),
                         ({"cache_key_files": ["/etc/passwd"]}, "cache_key_files must be a non-empty list"),
                         ({"cache_key_files": ["../x"]}, "cache_key_files must be a non-empty list"),
                         ({"cache_ttl_hours": 0}, "cache_ttl_hours takes a number of hours"),
                         ({"maintenance": ["npm", "ci"]}, "maintenance must be a shell script")):
        with pytest.raises(ApplyError, match=message):
            catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [
                {"name": "r", "account": "a", "prompt": "p", "triggers": [{"api": {}}], "environment": bad}]}, time.time())
    assert conn.get("rly:routines:version") == version  # nothing was stored


@pytest.mark.skipif(os.geteuid() != 0, reason="session users need the worker to run as root")
def test_session_users_write_a_cached_setup_as_their_own(conn, settings, env, world):
    users = {**env, "ROUTINELY_SESSION_USERS": "on"}
    apply(conn, world)
    first = session(conn, settings, users)
    vandal = session(conn, settings, users, text="vandal")
    third = session(conn, settings, users)
    assert all(s["record"]["status"] == "succeeded" for s in (first, vandal, third)), vandal["log"]
    assert setup_runs(first, vandal, third) == 1
    assert len({first["uid"], vandal["uid"], third["uid"]}) == 3
    # the second session's uid could edit files setup (another uid) made, in checkout and HOME
    assert vandal["home"] == "tool-1" and vandal.get("committed") == "committed", vandal["log"]
    assert third["home"] == "tool-1" and third["built"] == f"built from lib==1 by {first['id']}"
    assert third["status"] == "?? built.txt" and "junk.txt" not in third["files"]
    assert "overlay mounts are unavailable" not in vandal["log"]


def test_a_cached_checkout_that_cannot_move_to_the_new_head_runs_setup_cold(conn, settings, env, remotes, world):
    apply(conn, world, setup=SETUP + "; echo 'setup was here' >> api/README.md", maintenance="exit 3")
    first = session(conn, settings, env)
    head = commit(remotes, {"README.md": "# api, changed upstream\n"})  # the file setup changed too
    second = session(conn, settings, env)
    assert setup_runs(first, second) == 2 and "cannot be used: git reset" in second["log"]
    assert second["record"]["status"] == "succeeded" and second["head"] == head
    third = session(conn, settings, env)  # a hit: maintenance runs, and fails the session
    assert setup_runs(first, second, third) == 2
    assert third["record"]["status"] == "failed" and third["record"]["exit_code"] == 3
    assert "routinely: maintenance exited with code 3; the agent was not started" in third["log"]
    assert "head" not in third  # the agent never ran
