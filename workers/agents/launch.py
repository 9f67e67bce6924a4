"""Turn the routine's agent choice into a command line, its variables and its config files."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from routinely.routine_file import Agent
from workers.agents.presets import PRESETS, Preset
from workers.workspace import Workspace


class AgentError(Exception):
    """The agent cannot be started here; str() is the one line for the session's log."""


@dataclass
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # the preset's own variables
    transcript: str | None = None
    label: str = ""  # what the log says it started


def choose(routine_agent: Agent | Mapping[str, Any] | None, default: str) -> tuple[Preset | None, str | None, str | None]:
    """(preset, model, command): the routine's `agent` when it has one (a mapping in the
    file's shape is validated into an Agent), else ROUTINELY_AGENT."""
    if routine_agent is not None:
        routine_agent = Agent.model_validate(routine_agent)
        if routine_agent.command:
            return None, None, routine_agent.command
        return PRESETS[routine_agent.preset], routine_agent.model, None
    if default in PRESETS:
        return PRESETS[default], None, None
    return None, None, default


def prepare(routine_agent: Agent | Mapping[str, Any] | None, default: str, ws: Workspace, connectors: Mapping[str, Any],
            gateway_env: Mapping[str, str], as_root: bool) -> Launch:
    """The agent's Launch, its config files written into the session's HOME. Raises AgentError."""
    preset, model, command = choose(routine_agent, default)
    cwd = ws.repos[0] if ws.repos else ws.root
    if preset is None:
        return Launch(["bash", "-c", command], cwd, label=command)
    if shutil.which(preset.binary, path=os.environ.get("PATH")) is None:
        raise AgentError(f"routinely: the agent preset '{preset.name}' needs `{preset.binary}` on PATH: install it "
                         f"({preset.install}) or set ROUTINELY_AGENT to a command")
    fill = {"workspace": str(ws.root), "home": str(ws.home), "base_url": gateway_env.get("OPENAI_BASE_URL", "")}
    argv = [preset.binary, *(part.format(**fill) for part in preset.argv)]
    options = [preset.model_flag, model] if model else []
    for other in ws.repos[1:]:
        options += [preset.add_dir_flag, str(other)]
    at = len(argv) - 1 if argv[-1] == "-" else len(argv)  # before a trailing "read the prompt from stdin"
    argv[at:at] = options
    env = {k: v.format(**fill) for k, v in preset.env.items()}
    if as_root:
        env.update(preset.root_env)
    write_config(preset, ws, connectors)
    return Launch(argv, cwd, env, preset.transcript, label=" ".join(argv[:2]) + (f" (model {model})" if model else ""))


def write_config(preset: Preset, ws: Workspace, connectors: Mapping[str, Any]) -> None:
    """The connectors where this agent looks for them, inside the session's own HOME."""
    if preset.mcp == "codex-toml":
        _home_file(ws, ".codex/config.toml", codex_toml(connectors))
    elif preset.mcp == "gemini-settings":
        settings = {"security": {"auth": {"selectedType": "gemini-api-key"}},
                    "mcpServers": {name: _gemini_server(spec) for name, spec in connectors.items()}}
        _home_file(ws, ".gemini/settings.json", json.dumps(settings, indent=2) + "\n")
    # mcp-json: the workspace's .mcp.json, written for every session (command agents read it too)


def _home_file(ws: Workspace, relative: str, text: str) -> Path:
    """A file in the session's HOME, which on a warm start an earlier session wrote: through
    Workspace.write, which follows no link on the way."""
    return ws.write(str((ws.home / relative).relative_to(ws.root)), text)


def _gemini_server(spec: Mapping[str, Any]) -> dict[str, Any]:
    if "url" in spec:
        key = "url" if spec.get("type") == "sse" else "httpUrl"
        return {key: spec["url"], **({"headers": spec["headers"]} if spec.get("headers") else {})}
    return {k: spec[k] for k in ("command", "args", "env", "cwd") if k in spec}


def codex_toml(connectors: Mapping[str, Any]) -> str:
    """Codex's config.toml: one [mcp_servers.NAME] table per connector (strings, lists, tables)."""
    lines: list[str] = []
    for name, spec in connectors.items():
        server = {k: spec[k] for k in ("command", "args", "cwd", "url") if k in spec}
        lines.append(f"[mcp_servers.{_key(name)}]")
        lines += [f"{_key(k)} = {_toml(v)}" for k, v in server.items()]
        for table, source in (("env", "env"), ("http_headers", "headers")):
            if spec.get(source):
                lines.append(f"[mcp_servers.{_key(name)}.{table}]")
                lines += [f"{_key(k)} = {_toml(v)}" for k, v in spec[source].items()]
        lines.append("")
    return "\n".join(lines)


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)


def _toml(value: Any) -> str:
    # JSON strings and arrays of strings are valid TOML basic strings and arrays
    if isinstance(value, (str, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))
