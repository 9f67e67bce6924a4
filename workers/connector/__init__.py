"""The built-in github connector: a per-session MCP server through which a session acts on GitHub.

What crosses its border:
- in: the session id, its routine's spec (repositories, branch_prefix, `github:` policy), the
  worker's settings, installation tokens and Redis, the session's push guard (which branches it
  pushed) and its log; a unix socket path (in the sandbox's door_dir) to listen on;
- out: `Connector.mcp_entry(port)` — the `github` entry of .mcp.json, with the session's bearer
  token — `Policy.prompt()` for the agent's prompt, and the record of every call (session log
  lines, `actions` on the session). Installation tokens never leave the worker.

Modules: `policy` (what may be done), `tools` (names and argument shapes), `github` (the REST
call), `record` (log line and action), `server` (MCP over streamable HTTP, bearer check).
"""
from workers.connector.policy import Policy
from workers.connector.server import Connector, ConnectorError

__all__ = ["Connector", "ConnectorError", "Policy"]
