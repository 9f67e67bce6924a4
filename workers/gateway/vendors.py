"""What differs between model vendors: where the session's variables point, how the key is
carried, where usage sits in a response or a stream, and how the output cap is named."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from routinely.config import Settings
from workers.gateway.jsonpick import Path, Picker


@dataclass(frozen=True)
class Vendor:
    name: str  # the gateway's route: /NAME/...
    upstream: Callable[[Settings], str]
    base_env: Mapping[str, str]  # session variable -> suffix after the gateway's route URL
    token_env: tuple[str, ...]  # session variables that hold the per-session token
    endpoints: re.Pattern[str]  # the model endpoints (POST) the meter prices; every other path is refused
    request_fields: tuple[str, ...]  # the body's top-level keys the gateway reads: the model and the output cap


VENDORS: dict[str, Vendor] = {
    "anthropic": Vendor("anthropic", lambda s: s.anthropic_api_url, {"ANTHROPIC_BASE_URL": ""}, ("ANTHROPIC_API_KEY",),
                        re.compile(r"/v1/messages(/count_tokens)?"), ("model", "max_tokens")),
    "openai": Vendor("openai", lambda s: s.openai_api_url, {"OPENAI_BASE_URL": "/v1"}, ("OPENAI_API_KEY", "CODEX_API_KEY"),
                     re.compile(r"/v1/(chat/completions|responses)"),
                     ("model", "max_output_tokens", "max_completion_tokens", "max_tokens")),
    "gemini": Vendor("gemini", lambda s: s.gemini_api_url, {"GOOGLE_GEMINI_BASE_URL": ""}, ("GEMINI_API_KEY",),
                     re.compile(r"/v1(beta)?/models/[A-Za-z0-9][A-Za-z0-9._-]*:(generateContent|streamGenerateContent|countTokens)"),
                     ("model", "generationConfig", "generation_config")),
}

# never passed to a session, even when named in ROUTINELY_AGENT_ENV: credentials, and the
# service's own base URLs (in a session those names point at the gateway)
WITHHELD = frozenset({
    "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE",
    "GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GEMINI_BASE_URL",
    "ROUTINELY_ANTHROPIC_API_URL", "ROUTINELY_OPENAI_API_URL", "ROUTINELY_GEMINI_API_URL",
})


def session_env(gateway_url: str, token: str) -> dict[str, str]:
    """Every vendor's variables for a session, pointing at its gateway with its token."""
    env: dict[str, str] = {}
    for vendor in VENDORS.values():
        for name, suffix in vendor.base_env.items():
            env[name] = f"{gateway_url}/{vendor.name}{suffix}"
        for name in vendor.token_env:
            env[name] = token
    return env


def credential_headers(vendor: str, settings: Settings, beta: str | None) -> dict[str, str] | None:
    """The service's credential as the vendor expects it; None when the service holds none."""
    if vendor == "anthropic":
        if settings.anthropic_api_key:
            return {"x-api-key": settings.anthropic_api_key}
        if settings.claude_code_oauth_token:
            betas = ",".join(b for b in (beta, "oauth-2025-04-20") if b)
            return {"authorization": f"Bearer {settings.claude_code_oauth_token}", "anthropic-beta": betas}
    elif vendor == "openai" and settings.openai_api_key:
        return {"authorization": f"Bearer {settings.openai_api_key}"}
    elif vendor == "gemini" and settings.gemini_api_key:
        return {"x-goog-api-key": settings.gemini_api_key}
    return None


CREDENTIAL_NAMES = {"anthropic": "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN", "openai": "OPENAI_API_KEY",
                    "gemini": "GEMINI_API_KEY"}


def cap_output(vendor: str, path: str, body: dict[str, Any], left: int) -> bool:
    """Lower the request's output-token cap to what the budget has left; True when changed.
    `body` holds the request's top-level fields (at least the vendor's `request_fields`)."""
    left = max(1, left)
    if vendor == "gemini":  # the proto's snake_case names are read too: every spelling gets the cap
        changed = False
        for name in [n for n in ("generationConfig", "generation_config") if n in body] or ["generationConfig"]:
            config = body.setdefault(name, {})
            if isinstance(config, dict):
                changed = _cap(config, ["maxOutputTokens", "max_output_tokens"], left) or changed
        return changed
    if vendor == "anthropic":
        return _cap(body, ["max_tokens"], left)
    return _cap(body, ["max_output_tokens"] if path.endswith("/responses") else ["max_completion_tokens", "max_tokens"],
                left)


def _cap(fields: dict[str, Any], names: list[str], left: int) -> bool:
    changed = False
    for name in [n for n in names if isinstance(fields.get(n), int)] or names[:1]:
        if not isinstance(fields.get(name), int) or fields[name] > left:
            fields[name] = left
            changed = True
    return changed


def model_of(vendor: str, path: str, body: Any) -> str | None:
    if vendor == "gemini" and "/models/" in path:
        return path.split("/models/", 1)[1].split(":", 1)[0]
    return body.get("model") if isinstance(body, dict) else None


def usage_of(vendor: str, data: Any) -> tuple[str | None, dict[str, int]] | None:
    """(model, tokens) from one response body or stream event, or None when it has no usage."""
    if not isinstance(data, dict):
        return None
    if vendor == "anthropic":
        if data.get("type") == "message_start":
            message = data.get("message") or {}
            return message.get("model"), _anthropic(message.get("usage"))
        if data.get("type") == "message_delta":
            return None, _anthropic(data.get("usage"))
        if data.get("type") == "message":
            return data.get("model"), _anthropic(data.get("usage"))
        return None
    if vendor == "openai":
        if isinstance(data.get("response"), dict):  # Responses API stream: response.completed
            data = data["response"]
        usage = data.get("usage")
        if not isinstance(usage, dict):
            return None
        details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        prompt = int(usage.get("input_tokens", usage.get("prompt_tokens")) or 0)
        output = int(usage.get("output_tokens", usage.get("completion_tokens")) or 0)
        return data.get("model"), {"input_tokens": prompt - cached, "output_tokens": output,
                                   "cache_read_input_tokens": cached}
    meta = data.get("usageMetadata")
    if not isinstance(meta, dict):
        return None
    cached = int(meta.get("cachedContentTokenCount") or 0)
    return data.get("modelVersion"), {
        "input_tokens": int(meta.get("promptTokenCount") or 0) - cached,
        "output_tokens": int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0),
        "cache_read_input_tokens": cached}


def _anthropic(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    return {k: int(usage[k]) for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                       "cache_read_input_tokens") if isinstance(usage.get(k), int)}


# where usage and the model sit in a response body or one stream event, for every vendor
USAGE_PATHS: frozenset[Path] = frozenset({
    ("type",), ("model",), ("usage",), ("message", "model"), ("message", "usage"),  # Anthropic
    ("response", "model"), ("response", "usage"),  # OpenAI's Responses stream
    ("usageMetadata",), ("modelVersion",),  # Gemini
})


class Usage:
    """Usage read from a response as it passes, never holding it whole: a JSON body (its
    top-level usage; for a JSON array, the last element's) or an SSE stream (every `data:`
    line). Later values override earlier ones (Anthropic's message_delta carries the final
    output tokens; OpenAI and Gemini report running totals), so the last of each field is the
    response's. `finish()` once the response has ended."""

    def __init__(self, vendor: str, stream: bool) -> None:
        self.vendor, self.stream = vendor, stream
        self.model: str | None = None
        self.tokens: dict[str, int] = {}
        self.seen = False
        self._picker: Picker | None = None if stream else Picker(USAGE_PATHS)
        self._head = b""  # the start of a stream line, until it says whether it is data
        self._skip = False  # the rest of a line that is not data

    def feed(self, chunk: bytes) -> None:
        if not self.stream:
            self._picker.feed(chunk)
            return
        while chunk:
            line_end = chunk.find(b"\n")
            part, chunk = (chunk, b"") if line_end < 0 else (chunk[:line_end], chunk[line_end + 1:])
            self._line(part)
            if line_end >= 0:
                self._end_line()

    def finish(self) -> None:
        if not self.stream:
            self._take(self._picker)
        else:
            self._end_line()

    def _line(self, part: bytes) -> None:
        if self._picker is not None:
            self._picker.feed(part)
        elif not self._skip:
            self._head += part
            if len(self._head) >= 5:
                if self._head.startswith(b"data:"):
                    self._picker = Picker(USAGE_PATHS)
                    self._picker.feed(self._head[5:])
                else:
                    self._skip = True
                self._head = b""

    def _end_line(self) -> None:
        if self._picker is not None:
            self._take(self._picker)
        self._picker, self._head, self._skip = None, b"", False

    def _take(self, picker: Picker) -> None:
        found = usage_of(self.vendor, picker.nested())
        if found:
            model, tokens = found
            self.model = model or self.model
            self.tokens.update(tokens)
            self.seen = True
