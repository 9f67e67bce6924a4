"""The session sandbox: walls (what a session may see and reach) and doors (the sockets it is given).

What crosses this border:
- in: a routine's `environment` (network policy, allow_hosts), the session id, the settings;
  the doors other parts serve — each a unix socket the worker listens on, created in
  `Sandbox.door_dir` and handed over with `Sandbox.add_door(name, path) -> port`;
- out: `Sandbox.command(argv)`, the one command line that runs setup or the agent inside the
  sandbox, `Sandbox.extra_env` (proxy variables), and `SandboxError` (one line: the host cannot
  enforce what the routine asks, so the session does not run).

Inside, the session reaches every door at 127.0.0.1:PORT through one small launcher
(`launch.py`); the egress proxy (`egress.py`) is one of those doors.
"""
from workers.sandbox.box import Door, Sandbox, SandboxError, kill_user, netns_prefix, session_uid

__all__ = ["Door", "Sandbox", "SandboxError", "kill_user", "netns_prefix", "session_uid"]
