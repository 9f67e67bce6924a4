"""Each supported agent CLI as one record: its command line, its variables, where it reads
its MCP connectors and which vendor API (through the gateway) it talks to.

The prompt reaches every preset on stdin (and in $ROUTINELY_PROMPT_FILE).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    binary: str
    argv: tuple[str, ...]  # after the binary; the prompt comes on stdin
    vendor: str  # the gateway route the agent's API calls take: anthropic | openai | gemini
    mcp: str  # how it finds the connectors: mcp-json | codex-toml | gemini-settings
    model_flag: str
    add_dir_flag: str  # gives the agent the checkouts other than the one it starts in
    env: dict[str, str] = field(default_factory=dict)
    root_env: dict[str, str] = field(default_factory=dict)  # only when the agent's uid is 0
    transcript: str | None = None  # the structured events it prints on stdout
    install: str = ""


PRESETS: dict[str, Preset] = {
    "claude": Preset(
        name="claude",
        binary="claude",
        argv=("-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "bypassPermissions",
              "--mcp-config", "{workspace}/.mcp.json"),
        vendor="anthropic",
        mcp="mcp-json",
        model_flag="--model",
        add_dir_flag="--add-dir",
        env={
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no bootstrap, title or telemetry calls
            "MCP_CONNECTION_NONBLOCKING": "false",  # connectors are up before the first request
            "CLAUDE_CODE_MAX_RETRIES": "3",  # an unreachable API fails in seconds, not minutes
            "DISABLE_AUTOUPDATER": "1",
        },
        root_env={"IS_SANDBOX": "1"},  # bypassPermissions refuses uid 0 without it
        transcript="claude-stream-json",
        install="npm install -g @anthropic-ai/claude-code",
    ),
    "codex": Preset(
        name="codex",
        binary="codex",
        argv=("exec", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check", "--json",
              "-c", 'openai_base_url="{base_url}"', "-"),
        vendor="openai",
        mcp="codex-toml",
        model_flag="--model",
        add_dir_flag="--add-dir",
        env={"CODEX_HOME": "{home}/.codex"},
        transcript="codex-json",
        install="npm install -g @openai/codex",
    ),
    "gemini": Preset(
        name="gemini",
        binary="gemini",
        argv=("--yolo", "--skip-trust", "-p", "Carry out the task given on standard input."),
        vendor="gemini",
        mcp="gemini-settings",
        model_flag="--model",
        add_dir_flag="--include-directories",
        install="npm install -g @google/gemini-cli",
    ),
}
