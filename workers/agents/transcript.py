"""Read an agent's structured output (Claude Code's stream-json, Codex's `exec --json`
JSONL) into transcript entries,
a readable line for the plain log, and the usage the agent reports at the end.

Lines that are not the agent's JSON events (its stderr, a wrapper's echo) pass to the log as
they are, so the plain log keeps working whatever the agent prints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from routinely.records.transcript import MAX_FIELD, cut


@dataclass
class Reading:
    log: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    agent_usage: dict[str, Any] | None = None
    api_error: str | None = None  # the agent could not reach its model (connection failed)


def read_lines(fmt: str | None, lines: list[str]) -> Reading:
    out = Reading()
    reader = READERS.get(fmt or "")
    for line in lines:
        event = _json(line) if reader else None
        if event is None:
            out.log.append(line)
        else:
            reader(event, out)
    return out


def _json(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "type" in event else None


def _claude_event(event: dict[str, Any], out: Reading) -> None:
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        servers = [{"name": s.get("name"), "status": s.get("status")} for s in event.get("mcp_servers") or []]
        out.entries.append({"kind": "start", "model": event.get("model"), "cwd": event.get("cwd"),
                            "tools": len(event.get("tools") or []), "mcp_servers": servers,
                            "version": event.get("claude_code_version")})
        failed = [s["name"] for s in servers if s["status"] not in ("connected", None)]
        out.log.append(f"agent: model {event.get('model')} in {event.get('cwd')}, "
                       f"connectors: {', '.join(s['name'] + ' ' + str(s['status']) for s in servers) or 'none'}")
        if failed:
            out.entries.append({"kind": "error", "text": f"connectors not connected: {', '.join(failed)}"})
    elif kind == "assistant":
        message = event.get("message") or {}
        if event.get("error") or event.get("is_api_error_message"):
            text = _text_of(message.get("content")) or str(event.get("error"))
            out.entries.append({"kind": "error", "text": cut(text)})
            out.log.append(f"agent error: {text}")
            if event.get("api_error") == "connection_failed":
                out.api_error = text
            return
        for block in message.get("content") or []:
            _assistant_block(block, out)
    elif kind == "user":
        for block in (event.get("message") or {}).get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                output = _text_of(block.get("content"))
                out.entries.append({"kind": "tool_result", "id": block.get("tool_use_id"), "output": cut(output),
                                    "is_error": bool(block.get("is_error"))})
                if block.get("is_error"):
                    out.log.append(f"agent: tool failed: {output.splitlines()[0] if output else ''}")
    elif kind == "result":
        usage = event.get("usage") or {}
        out.agent_usage = {
            "input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens"),
            "cache_creation_input_tokens": usage.get("cache_creation_input_tokens"),
            "cache_read_input_tokens": usage.get("cache_read_input_tokens"),
            "cost_usd": event.get("total_cost_usd"), "turns": event.get("num_turns"),
            "duration_ms": event.get("duration_ms"), "duration_api_ms": event.get("duration_api_ms"),
            "is_error": bool(event.get("is_error")), "models": sorted(event.get("modelUsage") or {}),
        }
        result = event.get("result") or ""
        out.entries.append({"kind": "result", "text": cut(str(result)), "is_error": bool(event.get("is_error")),
                            **{k: out.agent_usage[k] for k in ("turns", "duration_ms", "cost_usd")},
                            "usage": {k: v for k, v in out.agent_usage.items() if k.endswith("tokens")}})
        out.log.append(f"agent result{' (error)' if event.get('is_error') else ''}: {result}")
        if event.get("api_error") == "connection_failed":
            out.api_error = out.api_error or str(result)


def _assistant_block(block: Any, out: Reading) -> None:
    if not isinstance(block, dict):
        return
    if block.get("type") == "text" and block.get("text"):
        out.entries.append({"kind": "text", "text": cut(block["text"])})
        out.log.extend(f"agent: {line}" for line in block["text"].splitlines() or [""])
    elif block.get("type") == "thinking" and block.get("thinking"):
        out.entries.append({"kind": "thinking", "text": cut(block["thinking"])})
    elif block.get("type") in ("tool_use", "server_tool_use", "mcp_tool_use"):
        tool_input = block.get("input") or {}
        raw = json.dumps(tool_input)
        out.entries.append({"kind": "tool_call", "id": block.get("id"), "name": block.get("name"),
                            "input": tool_input if len(raw) <= MAX_FIELD else {"cut": cut(raw)}})
        shown = tool_input.get("command") or tool_input.get("file_path") or json.dumps(tool_input)
        out.log.append(f"agent: {block.get('name')}: {cut(str(shown), 300)}")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return "" if content is None else str(content)


def _codex_event(event: dict[str, Any], out: Reading) -> None:
    kind = event.get("type")
    if kind == "thread.started":
        out.entries.append({"kind": "start", "model": None, "cwd": None, "tools": None, "mcp_servers": [],
                            "version": None})
    elif kind in ("item.completed", "item.started"):
        item = event.get("item") or {}
        what = item.get("type") or item.get("item_type")
        if kind == "item.started":
            if what in ("command_execution", "mcp_tool_call"):
                out.log.append(f"agent: {what}: {cut(str(item.get('command') or item.get('tool') or ''), 300)}")
            return
        if what == "agent_message" and item.get("text"):
            out.entries.append({"kind": "text", "text": cut(item["text"])})
            out.log.extend(f"agent: {line}" for line in item["text"].splitlines() or [""])
        elif what == "reasoning" and item.get("text"):
            out.entries.append({"kind": "thinking", "text": cut(item["text"])})
        elif what in ("command_execution", "mcp_tool_call", "file_change", "web_search"):
            name = {"command_execution": "shell", "file_change": "edit", "web_search": "web_search"}.get(
                what, f"{item.get('server')}.{item.get('tool')}")
            shown = {k: item[k] for k in ("command", "arguments", "changes", "query") if k in item}
            failed = item.get("status") == "failed" or item.get("exit_code") not in (None, 0)
            out.entries.append({"kind": "tool_call", "id": item.get("id"), "name": name, "input": shown})
            output = item.get("aggregated_output") or json.dumps(item.get("result") or item.get("error") or "")
            out.entries.append({"kind": "tool_result", "id": item.get("id"), "output": cut(str(output)), "is_error": failed})
        elif what == "error":
            out.entries.append({"kind": "error", "text": cut(str(item.get("message")))})
    elif kind == "turn.completed":
        usage = event.get("usage") or {}
        previous = out.agent_usage or {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "turns": 0}
        cached = int(usage.get("cached_input_tokens") or 0)
        out.agent_usage = {"input_tokens": previous["input_tokens"] + int(usage.get("input_tokens") or 0) - cached,
                           "output_tokens": previous["output_tokens"] + int(usage.get("output_tokens") or 0),
                           "cache_read_input_tokens": previous["cache_read_input_tokens"] + cached,
                           "cache_creation_input_tokens": None, "cost_usd": None, "turns": previous["turns"] + 1,
                           "duration_ms": None, "duration_api_ms": None, "is_error": False, "models": []}
    elif kind in ("turn.failed", "error"):
        message = (event.get("error") or {}).get("message") if kind == "turn.failed" else event.get("message")
        out.entries.append({"kind": "error", "text": cut(str(message))})
        out.log.append(f"agent error: {message}")


READERS = {"claude-stream-json": _claude_event, "codex-json": _codex_event}
