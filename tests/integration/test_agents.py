"""Agent presets as data: the command line, variables and config files each preset gets, the
routine's `agent` choice, and reading Claude Code's stream-json into a transcript."""
from __future__ import annotations

import json
import os
import stat
import time
import tomllib

import pytest

from routinely.routines import catalog
from routinely.records import transcript
from routinely.routines.agent_spec import PRESET_NAMES
from routinely.routine_file import ApplyError
from tests.support import redis_snapshot
from workers.agents import PRESETS, AgentError, prepare
from workers.agents.transcript import read_lines
from workers.gateway import session_env
from workers.workspace import Workspace

CONNECTORS = {"slack": {"type": "http", "url": "https://mcp.example.com/slack", "headers": {"Authorization": "Bearer xoxb"}},
              "linear": {"command": "npx", "args": ["-y", "linear-mcp"], "env": {"LINEAR_API_KEY": "lin"}}}
GATEWAY = session_env("http://127.0.0.1:4242", "rly-session-tok")


@pytest.fixture
def ws(tmp_path):
    w = Workspace.create(tmp_path / "data", "session_x")
    for name in ("api", "sdk"):
        (w.root / name).mkdir()
        w.repos.append(w.root / name)
    return w


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """Stand-in binaries named like the CLIs, so prepare() finds them on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("claude", "codex", "gemini"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_the_preset_names_the_routine_file_knows_are_the_presets():
    assert set(PRESET_NAMES) == set(PRESETS)


def test_claude_starts_in_the_first_checkout_with_the_others_added(ws, on_path):
    launch = prepare({"preset": "claude", "model": "claude-sonnet-4-5"}, "claude", ws, CONNECTORS, GATEWAY, as_root=False)
    assert launch.cwd == ws.repos[0]
    assert launch.argv[0] == "claude" and launch.argv[launch.argv.index("--add-dir") + 1] == str(ws.repos[1])
    assert launch.argv[launch.argv.index("--model") + 1] == "claude-sonnet-4-5"
    for flag in ("-p", "--verbose", "--output-format", "stream-json", "--permission-mode", "bypassPermissions"):
        assert flag in launch.argv
    assert launch.argv[launch.argv.index("--mcp-config") + 1] == str(ws.root / ".mcp.json")
    assert launch.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert launch.env["MCP_CONNECTION_NONBLOCKING"] == "false"
    assert "IS_SANDBOX" not in launch.env and launch.transcript == "claude-stream-json"
    as_root = prepare(None, "claude", ws, CONNECTORS, GATEWAY, as_root=True)
    assert as_root.env["IS_SANDBOX"] == "1" and "--model" not in as_root.argv


def test_codex_gets_its_base_url_on_the_command_line_and_mcp_in_config_toml(ws, on_path):
    launch = prepare({"preset": "codex", "model": "gpt-5"}, "claude", ws, CONNECTORS, GATEWAY, as_root=True)
    argv = launch.argv
    assert argv[:2] == ["codex", "exec"] and argv[-1] == "-"  # the prompt on stdin
    assert "--dangerously-bypass-approvals-and-sandbox" in argv and "--skip-git-repo-check" in argv
    assert argv[argv.index("-c") + 1] == 'openai_base_url="http://127.0.0.1:4242/openai/v1"'
    assert argv[argv.index("--model") + 1] == "gpt-5" and argv[argv.index("--add-dir") + 1] == str(ws.repos[1])
    assert launch.env["CODEX_HOME"] == str(ws.home / ".codex") and GATEWAY["OPENAI_API_KEY"] == "rly-session-tok"
    config = tomllib.loads((ws.home / ".codex" / "config.toml").read_text())
    assert config["mcp_servers"]["slack"] == {"url": "https://mcp.example.com/slack",
                                              "http_headers": {"Authorization": "Bearer xoxb"}}
    assert config["mcp_servers"]["linear"] == {"command": "npx", "args": ["-y", "linear-mcp"], "env": {"LINEAR_API_KEY": "lin"}}
    assert stat.S_IMODE((ws.home / ".codex" / "config.toml").stat().st_mode) == 0o600


def test_gemini_gets_yolo_and_its_settings_json_in_home(ws, on_path):
    launch = prepare({"preset": "gemini", "model": "gemini-2.5-pro"}, "claude", ws, CONNECTORS, GATEWAY, as_root=False)
    argv = launch.argv
    assert argv[0] == "gemini" and "--yolo" in argv and "--skip-trust" in argv and "-p" in argv
    assert argv[argv.index("--include-directories") + 1] == str(ws.repos[1])
    assert argv[argv.index("--model") + 1] == "gemini-2.5-pro"
    settings = json.loads((ws.home / ".gemini" / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["mcpServers"]["slack"] == {"httpUrl": "https://mcp.example.com/slack", "headers": {"Authorization": "Bearer xoxb"}}
    assert settings["mcpServers"]["linear"]["command"] == "npx"
    assert GATEWAY["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:4242/gemini" and GATEWAY["GEMINI_API_KEY"] == "rly-session-tok"


def test_a_command_agent_and_a_missing_cli(ws, tmp_path, monkeypatch):
    launch = prepare({"command": "my-agent --go"}, "claude", ws, {}, GATEWAY, as_root=False)
    assert launch.argv == ["bash", "-c", "my-agent --go"] and launch.transcript is None and launch.cwd == ws.repos[0]
    assert prepare(None, "echo hi", ws, {}, GATEWAY, as_root=False).argv == ["bash", "-c", "echo hi"]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AgentError, match=r"the agent preset 'codex' needs `codex` on PATH: install it \(npm install -g @openai/codex\)"):
        prepare({"preset": "codex"}, "claude", ws, {}, GATEWAY, as_root=False)


STREAM = [
    {"type": "system", "subtype": "init", "model": "m", "cwd": "/w/api", "tools": ["Bash"],
     "mcp_servers": [{"name": "slack", "status": "failed"}]},
    {"type": "assistant", "message": {"content": [{"type": "thinking", "thinking": "hmm"},
                                                  {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]}},
    {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}]}},
    {"type": "assistant", "message": {"content": [{"type": "text", "text": "Fixed it."}]}},
    {"type": "result", "result": "Fixed it.", "is_error": False, "num_turns": 2, "duration_ms": 1500, "total_cost_usd": 0.01,
     "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 1, "cache_read_input_tokens": 2},
     "modelUsage": {"m": {}}},
]


def test_stream_json_becomes_a_transcript_and_readable_log_lines(conn, client):
    reading = read_lines("claude-stream-json", [json.dumps(e) for e in STREAM] + ["plain stderr line"])
    kinds = [e["kind"] for e in reading.entries]
    assert kinds == ["start", "error", "thinking", "tool_call", "tool_result", "text", "result"]
    assert reading.agent_usage == {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 1,
                                   "cache_read_input_tokens": 2, "cost_usd": 0.01, "turns": 2, "duration_ms": 1500,
                                   "duration_api_ms": None, "is_error": False, "models": ["m"]}
    assert "agent: Bash: ls" in reading.log and "agent: tool failed: boom" in reading.log
    assert "plain stderr line" in reading.log and "agent: Fixed it." in reading.log
    # any other agent's output is the plain log, untouched
    assert read_lines(None, [json.dumps(STREAM[0])]).log == [json.dumps(STREAM[0])]
    steps = transcript.steps(reading.entries)
    call = next(s for s in steps if s["kind"] == "tool_call")
    assert call["result"]["output"] == "boom" and "tool_result" not in [s["kind"] for s in steps]


def test_the_page_shows_the_transcript_with_errors_highlighted(conn, client, settings):
    conn.hset("rly:session:session_t1", mapping={"id": "session_t1", "routine": "r", "account": "a", "status": "failed",
                                                 "trigger": "{}", "created_at": "2026-01-01T00:00:00Z"})
    transcript.append(conn, "session_t1", read_lines("claude-stream-json", [json.dumps(e) for e in STREAM]).entries)
    page = client.get("/sessions/session_t1").data.decode()
    assert 'class="step tool failed"' in page and "<details><summary>output (error)</summary><pre>boom</pre>" in page
    assert "connectors not connected: slack" in page and "Fixed it." in page
    fragment = client.get("/sessions/session_t1/transcript").data.decode()
    assert "Fixed it." in fragment and client.get("/sessions/nope/transcript").status_code == 404


def _apply(conn, **routine):
    spec = {"name": "r", "account": "alice", "prompt": "p", "repositories": ["o/r"], "triggers": [{"api": {}}], **routine}
    catalog.apply(conn, {"accounts": [{"name": "alice"}], "connectors": {}, "routines": [spec]}, time.time())


@pytest.mark.parametrize("fields, message", [
    ({"agent": {"preset": "aider"}}, "agent.preset must be one of claude, codex, gemini"),
    ({"agent": {"command": ""}}, "agent.command must be a shell command"),
    ({"agent": {"preset": "claude", "command": "x"}}, "agent.command must be a shell command (a string), alone"),
    ({"agent": {"preset": "claude", "model": "bad model"}}, "agent.model must be a model name"),
    ({"agent": "claude"}, "agent takes {preset:"),
    ({"budget": {"max_tokens": 0}}, "budget.max_tokens takes a whole number"),
    ({"budget": {"max_cost_usd": "5"}}, "budget.max_cost_usd takes a number"),
    ({"budget": {"dollars": 5}}, "budget takes {max_cost_usd"),
    ({"idle_timeout_minutes": 0}, "idle_timeout_minutes takes a number"),
])
def test_bad_agent_and_budget_fields_reject_the_file_and_store_nothing(conn, fields, message):
    before = redis_snapshot(conn)
    with pytest.raises(ApplyError, match="routine 'r' \\(account alice\\): " + message.replace("(", "\\(").replace(")", "\\)")
                       .replace("{", "\\{").replace(".", "\\.")):
        _apply(conn, **fields)
    assert redis_snapshot(conn) == before


def test_agent_budget_and_idle_are_normalized(conn):
    _apply(conn, agent={"preset": "codex", "model": "gpt-5"}, budget={"max_cost_usd": 5}, idle_timeout_minutes=3)
    routine = catalog.load(conn).routines["alice/r"]
    assert routine.agent.to_file() == {"preset": "codex", "model": "gpt-5"}
    assert routine.budget.to_file() == {"max_cost_usd": 5, "max_tokens": None} and routine.idle_timeout_minutes == 3
    _apply(conn)
    routine = catalog.load(conn).routines["alice/r"]
    assert routine.agent is None and routine.idle_timeout_minutes == 10
    before = redis_snapshot(conn)
    with pytest.raises(ApplyError, match="daily_budget_usd takes a number"):
        catalog.apply(conn, {"accounts": [{"name": "alice", "daily_budget_usd": -1}], "routines": []}, time.time())
    assert redis_snapshot(conn) == before


CODEX = [
    {"type": "thread.started", "thread_id": "th_1"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "look first"}},
    {"type": "item.started", "item": {"id": "item_1", "type": "command_execution", "command": "bash -lc ls", "status": "in_progress"}},
    {"type": "item.completed", "item": {"id": "item_1", "type": "command_execution", "command": "bash -lc ls",
                                        "aggregated_output": "README.md\n", "exit_code": 0, "status": "completed"}},
    {"type": "item.completed", "item": {"id": "item_2", "type": "command_execution", "command": "make test",
                                        "aggregated_output": "1 failed\n", "exit_code": 2, "status": "failed"}},
    {"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": "Tests fail."}},
    {"type": "turn.completed", "usage": {"input_tokens": 100, "cached_input_tokens": 40, "output_tokens": 9}},
]


def test_codex_exec_json_becomes_a_transcript(client, conn):
    assert PRESETS["codex"].transcript == "codex-json"
    reading = read_lines("codex-json", [json.dumps(e) for e in CODEX])
    assert [e["kind"] for e in reading.entries] == ["start", "thinking", "tool_call", "tool_result", "tool_call",
                                                    "tool_result", "text"]
    steps = transcript.steps(reading.entries)
    calls = [s for s in steps if s["kind"] == "tool_call"]
    assert calls[0]["input"] == {"command": "bash -lc ls"} and calls[0]["result"]["output"] == "README.md\n"
    assert calls[1]["result"]["is_error"] is True
    assert "agent: command_execution: bash -lc ls" in reading.log and "agent: Tests fail." in reading.log
    assert reading.agent_usage["input_tokens"] == 60 and reading.agent_usage["cache_read_input_tokens"] == 40
    assert reading.agent_usage["output_tokens"] == 9 and reading.agent_usage["turns"] == 1


def test_an_unreachable_api_is_noticed_in_the_stream():
    failed = [{"type": "assistant", "message": {"content": [{"type": "text", "text": "API Error: Connection refused"}]},
               "error": "server_error", "is_api_error_message": True, "api_error": "connection_failed"},
              {"type": "result", "is_error": True, "result": "API Error: Connection refused", "api_error": "connection_failed",
               "num_turns": 1, "usage": {}}]
    reading = read_lines("claude-stream-json", [json.dumps(e) for e in failed])
    assert reading.api_error == "API Error: Connection refused"
    assert [e["kind"] for e in reading.entries] == ["error", "result"] and reading.entries[1]["is_error"]
    assert read_lines("claude-stream-json", [json.dumps(STREAM[-1])]).api_error is None
