"""The coding agents a session can run, as data: how each is started and configured, and
how its transcript is read.

In: the routine's `agent` choice (or ROUTINELY_AGENT), the workspace, the connectors, the
gateway's URL and per-session token. Out: a `Launch` (argv, the preset's variables, the
directory to start in, the transcript format) and the config files written into the
session's own HOME. Nothing here holds a model credential: presets only ever see the
gateway's per-session token.
"""
from workers.agents.presets import PRESETS, Preset
from workers.agents.launch import AgentError, Launch, prepare

__all__ = ["PRESETS", "Preset", "AgentError", "Launch", "prepare"]
