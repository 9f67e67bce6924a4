"""The real Claude Code CLI as the agent of real sessions, through the model gateway, against a
small fake of the Messages API (tests/fake_models.py): transcript, usage, key withholding,
budgets, liveness, under the network policies and with session users on and off.

`bash .ci/run` installs the pinned CLI; without it these tests are skipped and say so.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from routinely.routines import catalog
from routinely.records import model_usage, session_log, sessions, transcript
from routinely.firing.start import Firing, fire_one
from tests.fake_models import USAGE, FakeMessages
from tests.support import needs_root, needs_sandbox, PrivateHost, reachable_folder, redis_snapshot, Remotes, run_sessions

CLAUDE = shutil.which("claude")
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="the Claude Code CLI is not installed (bash .ci/run installs it)")

REAL_KEY = "sk-ant-real-key-only-the-gateway-holds-5b7e"
MODEL = "claude-test-model"
PUSH = ("git checkout -q -b claude/fix && git commit -q --allow-empty -m fix && git push -q origin claude/fix; "
        "git push -q origin HEAD:refs/heads/trunk; tr '\\0' '\\n' < /proc/$PPID/environ > agent-environ.txt; echo pushed")


@pytest.fixture
def world():
    """Data dir and remotes any session user can reach (pytest's tmp is root-only)."""
    with reachable_folder("rly-cc-") as base:
        (base / "github").mkdir()
        yield base


@pytest.fixture
def fake():
    server = FakeMessages(command=PUSH)
    yield server
    server.close()


@pytest.fixture
def env(redis_server, world, fake, tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"{MODEL}: {{input: 3, output: 15, cache_write: 3.75, cache_read: 0.3}}\n")
    home = tmp_path / "worker-home"
    home.mkdir()
    return {
        "PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
        "REDIS_URL": redis_server.url, "GITHUB_GIT_URL": f"file://{world / 'github'}",
        "ROUTINELY_DATA_DIR": str(world / "data"), "PUBLIC_URL": "http://routinely.test",
        "ROUTINELY_AGENT": "claude", "ROUTINELY_ANTHROPIC_API_URL": fake.url, "ANTHROPIC_API_KEY": REAL_KEY,
        "ROUTINELY_AGENT_ENV": "ANTHROPIC_API_KEY", "ROUTINELY_PRICES": str(prices), "ROUTINELY_KEEP_WORKSPACES": "1",
    }


def apply(conn, **routine):
    spec = {"name": "r", "account": "alice", "prompt": "Fix the bug and push a branch.", "repositories": ["octo/api"],
            "agent": {"preset": "claude", "model": MODEL}, "triggers": [{"api": {}}]}
    spec.update(routine)
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "enterprise", "daily_budget_usd": 0.001}],
                         "connectors": {}, "routines": [spec]}, time.time())


def run(conn, settings, env, **extra):
    s = fire_one(settings, conn, "r", Firing(kind="api", text="please"))
    run_sessions(env, **extra)
    return s["id"]


def log_of(conn, sid):
    return "\n".join(session_log.read(conn, sid)[0])


def remote(world):
    remotes = Remotes(world / "github")
    remotes.create("octo/api", branch="trunk", files={"CLAUDE.md": "REPO-RULE-7f3a: answer in one line.\n",
                                                     "README.md": "api\n"})
    return remotes


def check_real_run(conn, settings, client, fake, world, remotes, before, sid, uid_expected):
    s = client.get(f"/api/sessions/{sid}").get_json()
    log = log_of(conn, sid)
    assert s["status"] == "succeeded", log
    # the fake saw the real key on every request, never the session's token; the repository's CLAUDE.md reached it
    assert fake.turns and all(r.headers.get("x-api-key") == REAL_KEY for r in fake.requests)
    assert not any("rly-session-" in json.dumps(r.headers) for r in fake.requests)
    assert "REPO-RULE-7f3a" in json.dumps(fake.turns[0].body)
    # metered usage is what the fake reported, per response; the agent's own report sits beside it
    n = len([r for r in fake.requests if r.path.split("?")[0].endswith("/v1/messages")])
    assert s["usage"]["requests"] == n
    for name, value in USAGE.items():
        assert s["usage"][name] == value * n
    price = {"input_tokens": 3, "output_tokens": 15, "cache_creation_input_tokens": 3.75, "cache_read_input_tokens": 0.3}
    assert s["usage"]["cost_usd"] == pytest.approx(n * sum(USAGE[k] * price[k] for k in USAGE) / 1e6)
    assert s["usage"]["models"] == [MODEL]
    assert s["agent_usage"]["turns"] >= 2 and s["agent_usage"]["output_tokens"] == USAGE["output_tokens"] * len(fake.turns)
    # the transcript: the tool call with its input and output, the final text, the result
    entries = transcript.read(conn, sid)
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "start" and "tool_call" in kinds and "tool_result" in kinds and kinds[-1] == "result"
    # the built-in github connector was up before the first request (MCP_CONNECTION_NONBLOCKING=false)
    assert {"name": "github", "status": "connected"} in entries[0]["mcp_servers"], entries[0]
    assert "mcp__github__" in json.dumps(fake.turns[0].body)  # its tools offered in the first request (deferred or not)
    assert entries[0]["cwd"] == str(settings.data_dir / "workspaces" / sid / "api")
    call = next(e for e in entries if e["kind"] == "tool_call")
    assert call["name"] == "Bash" and call["input"]["command"] == PUSH
    assert "pushed" in next(e for e in entries if e["kind"] == "tool_result")["output"]
    assert entries[-1]["text"] == "All done." and not entries[-1]["is_error"]
    page = client.get(f"/sessions/{sid}").data.decode()
    assert "Bash" in page and "git push -q origin claude/fix" in page and "All done." in page and "pushed" in page
    assert "usage-gateway" in page and "agent-usage" in page
    # the push under the prefix was forwarded, the one outside refused
    after = remotes.refs("octo/api")
    assert "refs/heads/claude/fix" in after and after["refs/heads/trunk"] == before["refs/heads/trunk"]
    output = next(e for e in entries if e["kind"] == "tool_result")["output"]
    assert "push to refs/heads/trunk refused" in output  # what the agent's git push said
    assert "forwarded refs/heads/claude/fix to octo/api" in output
    # no real key in the agent's environment, the workspace's files, the log or Redis
    root = settings.data_dir / "workspaces" / sid
    environ = (root / "api" / "agent-environ.txt").read_text()
    assert "ANTHROPIC_API_KEY=rly-session-" in environ and REAL_KEY not in environ
    assert "HOME=" + str(root / ".home") in environ
    assert "IS_SANDBOX=1" in environ if uid_expected is None else "IS_SANDBOX" not in environ
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert REAL_KEY.encode() not in path.read_bytes(), path
    assert REAL_KEY not in log and "withheld from the session: ANTHROPIC_API_KEY" in log
    assert REAL_KEY not in repr(redis_snapshot(conn))
    # the agent's state stayed in the session's HOME
    assert (root / ".home" / ".claude").is_dir()
    return root


@needs_root
def test_claude_as_a_session_user(conn, settings, client, env, fake, world):
    settings = settings.with_(data_dir=world / "data")
    remotes = remote(world)
    before = remotes.refs("octo/api")
    apply(conn)
    stray = set(Path("/tmp").iterdir())
    sid = run(conn, settings, env, ROUTINELY_SESSION_USERS="on")
    root = check_real_run(conn, settings, client, fake, world, remotes, before, sid, uid_expected=True)
    # nothing written outside the workspace: the worker's HOME untouched, no new files in /tmp of the session's uid
    assert list(Path(env["HOME"]).iterdir()) == []
    uid = root.stat().st_uid
    assert uid != 0
    assert [p for p in set(Path("/tmp").iterdir()) - stray if p.stat().st_uid == uid] == []


@needs_sandbox
def test_claude_as_root_without_session_users_under_network_none(conn, settings, client, env, fake, world):
    settings = settings.with_(data_dir=world / "data")
    remotes = remote(world)
    before = remotes.refs("octo/api")
    apply(conn, environment={"network": "none"})
    sid = run(conn, settings, env, ROUTINELY_SESSION_USERS="off")
    check_real_run(conn, settings, client, fake, world, remotes, before, sid, uid_expected=None)
    assert list(Path(env["HOME"]).iterdir()) == []
    # the account's spend today is the session's; past daily_budget_usd, admission drops new firings
    s = sessions.get(conn, settings, sid)
    assert model_usage.spent_today(conn, "alice", "UTC", time.time()) == pytest.approx(s["usage"]["cost_usd"])
    assert model_usage.over_daily_budget(conn, "alice", "UTC", 0.001, time.time()) is not None
    assert model_usage.daily(conn, "routine", "alice/r", "UTC", time.time(), days=1)[0]["requests"] == s["usage"]["requests"]
    shown = subprocess.run([sys.executable, "-m", "cli", "sessions", "show", sid], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert (f"usage (metered by the gateway): {s['usage']['requests']} requests, {s['usage']['input_tokens']} input"
            in shown.stdout) and f"models {MODEL}" in shown.stdout and "reported by the agent: " in shown.stdout


class Hello:
    """Two small web servers on loopback: one the routine allows, one it does not."""

    def __init__(self) -> None:
        import socketserver
        import threading
        from http.server import BaseHTTPRequestHandler

        class Greet(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"hello-through-the-proxy")

            def log_message(self, *a):
                pass

        self.servers = [socketserver.ThreadingTCPServer((host, 0), Greet) for host in ("127.0.0.2", "127.0.0.3")]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.allowed, self.other = (f"127.0.0.{i + 2}:{srv.server_address[1]}" for i, srv in enumerate(self.servers))

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@needs_sandbox
def test_claude_under_allowlist_reaches_its_model_and_only_the_allowed_host(conn, settings, client, env, fake, world):
    settings = settings.with_(data_dir=world / "data")
    remote(world)
    hello, private = Hello(), PrivateHost()  # loopback is never opened: the allowed host is a private address
    try:
        fake.command = (f"curl -s -m 10 http://{private.address}/; echo; "
                        f"curl -s -m 10 -o /dev/null -w 'other:%{{http_code}}' http://{hello.other}/")
        apply(conn, environment={"network": "allowlist", "allow_hosts": [private.address]})
        sid = run(conn, settings, env, ROUTINELY_SESSION_USERS="off")
    finally:
        hello.close()
        private.close()
    s = client.get(f"/api/sessions/{sid}").get_json()
    log = log_of(conn, sid)
    assert s["status"] == "succeeded", log
    output = next(e for e in transcript.read(conn, sid) if e["kind"] == "tool_result")["output"]
    assert "hello-through-the-proxy" in output and "other:403" in output, output
    assert f"routinely: egress refused: {hello.other} is not in this routine's allow_hosts" in log
    assert s["usage"]["requests"] == len([r for r in fake.requests if r.path.split("?")[0].endswith("/v1/messages")])


def test_a_token_budget_stops_a_runaway_agent(conn, settings, client, env, fake, world):
    settings = settings.with_(data_dir=world / "data")
    remote(world)
    fake.loop, fake.command = True, "echo again"
    apply(conn, budget={"max_tokens": 100})
    sid = run(conn, settings, env, ROUTINELY_SESSION_USERS="off")
    s = client.get(f"/api/sessions/{sid}").get_json()
    log = log_of(conn, sid)
    assert s["status"] == "failed" and s["reason"] == "budget_exceeded", log
    assert len(fake.turns) == 1  # the fake saw no request after the cap
    assert fake.turns[0].body["max_tokens"] == 100  # the one request's output was capped to what was left
    assert s["usage"]["requests"] == 1
    assert "routinely: budget_exceeded: the session's budget of 100 tokens is spent (162 used)" in log
    assert any(e["kind"] == "error" and "budget_exceeded" in e["text"] for e in transcript.read(conn, sid))
    assert ({"routine": "alice/r", "reason": "budget_exceeded"}, 1.0) in model_usage.metrics(conn)["stops"]


def test_an_agent_that_sleeps_ends_stalled(conn, settings, client, env, world):
    settings = settings.with_(data_dir=world / "data")
    remote(world)
    apply(conn, agent={"command": "echo thinking; sleep 600"}, idle_timeout_minutes=0.1)
    sid = run(conn, settings, env, ROUTINELY_SESSION_USERS="off")
    s = client.get(f"/api/sessions/{sid}").get_json()
    assert s["status"] == "timed_out" and s["reason"] == "stalled"  # the idle timeout, not the session's own (60 min)
    assert "routinely: stalled: no model request and no log line since" in log_of(conn, sid)
    assert ({"routine": "alice/r", "reason": "stalled"}, 1.0) in model_usage.metrics(conn)["stops"]


def test_an_unreachable_vendor_fails_fast_with_one_line(conn, settings, client, env, world):
    settings = settings.with_(data_dir=world / "data")
    remote(world)
    apply(conn, timeout_minutes=1)  # an agent that retried on would be stopped here, as timed_out
    sid = run(conn, settings, env, ROUTINELY_SESSION_USERS="off", ROUTINELY_ANTHROPIC_API_URL="http://127.0.0.1:9")
    s = client.get(f"/api/sessions/{sid}").get_json()
    log = log_of(conn, sid)
    assert s["status"] == "failed", log  # ended by the agent's own failure, before its timeout
    assert log.count("routinely: the model gateway cannot reach http://127.0.0.1:9") == 1
    assert s["usage"]["requests"] == 0
