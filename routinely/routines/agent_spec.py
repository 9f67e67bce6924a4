"""The routine file's words about the agent, shared by the file's checks
(routinely.routine_file: `agent`, `budget`, `idle_timeout_minutes`) and the worker."""
from __future__ import annotations

PRESET_NAMES = ("claude", "codex", "gemini")  # workers.agents.PRESETS holds their data
DEFAULT_IDLE_MINUTES = 10  # no model request and no log line this long: timed_out ("stalled")
