"""The session sandbox: walls (what a session may see and reach) and doors (the sockets it is given).

What crosses this border:
- in: a routine's `environment` (network policy, allow_hosts), the session id, the settings
  (ROUTINELY_SANDBOX, ROUTINELY_SANDBOX_PATHS, session users); folders to share
  (`Sandbox.share`); the doors other parts serve — each a unix socket the worker listens on,
  created in `Sandbox.door_dir` and handed over with `Sandbox.add_door(name, path) -> port`;
- out: `Sandbox.command(argv, env, cwd, home) -> Command`, the one way setup and the agent
  are started (bubblewrap as the session's uid), `Sandbox.extra_env` (proxy variables),
  `SandboxError` (one line: the host cannot build what the routine asks, so the session does
  not run), and `host.problem()` for the worker's start-up check.

Inside, the session reaches every door at 127.0.0.1:PORT through one small launcher
(`launch.py`); the egress proxy (`egress.py`) is one of those doors and the only way out;
`addresses.py` is the rule of what it never dials; `bwrap.py` turns the walls into arguments.
"""
from workers.sandbox.box import (Command, Door, Sandbox, SandboxError, finish, git_alternates, kill_user, session_uid,
                                 sweep)
from workers.sandbox.cgroup import Limits

__all__ = ["Command", "Door", "Limits", "Sandbox", "SandboxError", "finish", "git_alternates", "kill_user", "session_uid", "sweep"]
