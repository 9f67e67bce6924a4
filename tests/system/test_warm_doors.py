"""A cached setup is what an earlier session wrote: the next session's start must treat it as
data. Session 1's setup plants links and names host folders; session 2 starts from that
snapshot; the host shows nothing was given away, overwritten or mounted.

Real sandboxes with session users, a real RQ worker, real git remotes, real overlay mounts.
"""
from __future__ import annotations

import os
import stat
import time

from routinely.routines import catalog
from routinely.records import session_log
from routinely.firing.start import Firing, fire_one
from tests.support import needs_root_sandbox, reachable_folder, Remotes, run_sessions


# a stand-in for the codex CLI: the preset writes its config into $HOME/.codex before it runs
CODEX = """#!/bin/sh
cat > /dev/null
echo "SEEN secret=$(cat "$SECRET_FILE" 2>&1 | head -c 200)"
echo "SEEN listing=$(ls "$SECRET_DIR" 2>&1 | head -c 200)"
exit 0
"""
SETUP = ('rm -rf "$HOME/.codex"; ln -s "$TARGET_DIR" "$HOME/.codex"; '
         'for r in $ROUTINELY_REPOS; do printf "%s\\n" "$SECRET_DIR" /proc /var >> "$r/.git/objects/info/alternates"; done')


@needs_root_sandbox
def test_a_cached_setup_cannot_turn_the_next_start_against_the_host(conn, settings, redis_server, tmp_path):
    target = tmp_path / "root-only"  # what the planted $HOME/.codex link points at
    target.mkdir(mode=0o700)
    (target / "config.toml").write_text("root's own\n")
    with reachable_folder("rly-warmdoor-") as world:
        secret_dir = world / "secret"  # a host folder no session is given
        secret_dir.mkdir(mode=0o755)
        (secret_dir / "secret.txt").write_text("TOP-SECRET-host-file\n")
        (secret_dir / "secret.txt").chmod(0o644)
        (world / "tools").mkdir(mode=0o755)
        (world / "tools" / "codex").write_text(CODEX)
        (world / "tools" / "codex").chmod(0o755)
        (world / "github").mkdir()
        Remotes(world / "github").create("octo/api")
        catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise"}], "routines": [{
            "name": "w", "account": "a", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}],
            "agent": {"preset": "codex"},
            "environment": {"network": "none", "setup": SETUP, "env": {
                "TARGET_DIR": str(target), "SECRET_DIR": str(secret_dir), "SECRET_FILE": str(secret_dir / "secret.txt")}}}]},
            time.time())
        env = {"PATH": f"{world / 'tools'}:{os.environ['PATH']}", "HOME": str(world), "REDIS_URL": redis_server.url,
               "ROUTINELY_DATA_DIR": str(world / "data"), "GITHUB_GIT_URL": Remotes(world / "github").url,
               "ROUTINELY_SESSION_USERS": "on", "ROUTINELY_SANDBOX_PATHS": str(world / "tools")}
        logs = []
        for _ in range(2):
            sid = fire_one(settings, conn, "w", Firing(kind="manual"))["id"]
            run_sessions(env)
            logs.append("\n".join(session_log.read(conn, sid)[0]))
    assert "setup cached" in logs[1], logs[1]  # the second session started from the planted snapshot
    # nothing of the host was given to the session's uid or overwritten through the link
    assert stat.S_IMODE(target.stat().st_mode) == 0o700 and target.stat().st_uid == 0
    assert (target / "config.toml").read_text() == "root's own\n" and (target / "config.toml").stat().st_uid == 0
    # the folders the checkout named in its alternates were not mounted into the next session
    for log in logs:
        assert "TOP-SECRET" not in log
    assert "SEEN listing=" in logs[1] and "secret.txt" not in logs[1].split("SEEN listing=")[1].splitlines()[0]
