"""The alert-triage case end to end, through a real worker and a real sandbox (network none):
the routine uses a Sentry-like service behind a credential door and an npm token in setup
only; the values sit in the store (sealed) and in the worker, and nowhere a session, a log,
a transcript or a commit can reach."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from routinely.records import session_log, sessions
from routinely.firing.start import Firing, fire_one
from tests.support import Remotes, reachable_folder
from tests.fake_service import VALUE, FakeService
from tests.support import SYSTEM_PYTHON, needs_sandbox, run_sessions


SENTRY = VALUE  # what the fake service takes as authorized
NPM = "npm_setup-only-value-51c2e8d4"
KEY = base64.b64encode(b"k" * 32).decode()

AGENT = r'''
import json, os, sys, urllib.request
url = os.environ["SENTRY_URL"] + "/api/0/issues/"
with urllib.request.urlopen(urllib.request.Request(url), timeout=20) as r:  # the door adds the header
    answer = json.loads(r.read())
print("ISSUES", json.dumps(answer), flush=True)
print("NPM_TOKEN in env:", "NPM_TOKEN" in os.environ, flush=True)
print("holds:", [k for k, v in os.environ.items() if "value" in v], flush=True)
'''


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for session users")
def test_alert_triage_uses_its_secrets_and_never_holds_them(conn, settings, redis_server):
    service = FakeService()
    with reachable_folder("rly-secrets-") as world:
        (world / "agents").mkdir()
        (world / "agents" / "triage.py").write_text(AGENT)
        (world / "agents" / "triage.py").chmod(0o644)
        (world / "agents").chmod(0o755)
        (world / "github").mkdir()
        Remotes(world / "github").create("octo/api")
        env = {"PATH": os.environ["PATH"], "HOME": str(world), "REDIS_URL": redis_server.url,
               "ROUTINELY_DATA_DIR": str(world / "data"), "GITHUB_GIT_URL": f"file://{world / 'github'}",
               "ROUTINELY_SECRETS_KEY": KEY, "ROUTINELY_SERVICES_ALLOW_HOSTS": f"127.0.0.1:{service.port}",
               "ROUTINELY_AGENT": f"{SYSTEM_PYTHON} {world / 'agents' / 'triage.py'}",
               "ROUTINELY_SANDBOX_PATHS": str(world / "agents"), "ROUTINELY_SESSION_USERS": "on"}
        cli = lambda *a, stdin=None: subprocess.run([sys.executable, "-m", "cli", *a], env=env, input=stdin,  # noqa: E731
                                                    capture_output=True, text=True, timeout=60)
        routine = {"name": "triage", "account": "ops", "prompt": "Triage the alert.", "repositories": ["octo/api"],
                   "triggers": [{"api": {}}], "secrets": ["SENTRY_TOKEN", "NPM_TOKEN"],
                   "services": {"sentry": {"url": f"http://127.0.0.1:{service.port}", "secret": "SENTRY_TOKEN",
                                           "header": "Authorization: Bearer {secret}"}},
                   "environment": {"network": "none", "setup_secrets": ["NPM_TOKEN"],
                                   "setup": 'test -n "$NPM_TOKEN" && echo "setup saw its token ($NPM_TOKEN)"'}}
        file = world / "routines.yml"
        file.write_text(json.dumps({"accounts": [{"name": "ops", "plan": "enterprise"}], "routines": [routine]}))
        refused = cli("apply", str(file))  # names secrets that are not stored yet
        assert refused.returncode == 1 and "secrets SENTRY_TOKEN, NPM_TOKEN are not stored" in refused.stderr
        assert cli("secret", "set", "SENTRY_TOKEN", "--routine", "ops/triage", stdin=SENTRY).returncode == 0  # before it is applied
        assert cli("secret", "set", "NPM_TOKEN", "--account", "ops", stdin=NPM).returncode == 0
        assert cli("apply", str(file)).returncode == 0
        listed = cli("secret", "list")
        assert "SENTRY_TOKEN" in listed.stdout and SENTRY not in listed.stdout and NPM not in listed.stdout

        sid = fire_one(settings, conn, "triage", Firing(kind="api", text="SEN-4521"))["id"]
        done = run_sessions(env)
        log = "\n".join(session_log.read(conn, sid)[0])
        s = sessions.get(conn, settings, sid)
        assert s["status"] == "succeeded", log + done.stderr[-2000:]
        # the service got the header; the agent got the answer, never the value
        assert [r["auth"] for r in service.seen] == [[f"Bearer {SENTRY}"]]
        assert 'ISSUES {"path": "/api/0/issues/", "authorized": true}' in log
        assert "routinely: service sentry: GET /api/0/issues/ → 200" in log  # the door logs method, path, status
        # the setup secret: in setup, gone for the agent; its value shown redacted
        assert "setup saw its token ([secret NPM_TOKEN])" in log and "NPM_TOKEN in env: False" in log
        assert "routinely: the setup result was not cached: setup had setup_secrets (NPM_TOKEN)" in log
        assert "holds: []" in log
        # nowhere a person or a session reads: the log, the record, every Redis value, the worker's output
        everything = b"".join(conn.dump(k) or b"" for k in conn.scan_iter("*"))
        assert not (world / "data" / "workspaces" / sid).exists()  # the workspace is gone, and with it what setup wrote
        for value in (SENTRY, NPM):
            assert value not in log and value not in done.stderr and value.encode() not in everything
    service.close()
