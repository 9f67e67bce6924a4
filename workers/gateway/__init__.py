"""The per-session model gateway: the agent's only way to its model, and the meter of every token.

What crosses its border:
- in (from the session, over the `gateway` door's unix socket): vendor API requests under
  /anthropic, /openai and /gemini, carrying the per-session token where the vendor's key
  would be (any other token: 401). Only the model endpoints the meter prices pass
  (`route`); any other path or method is 403 and a line in the session log. What one
  session may make the worker hold is capped (`server`: connections, heads, bodies);
- out (to the vendor, ROUTINELY_*_API_URL): the same requests with the service's own
  credential swapped in, responses (SSE included) streamed back unbuffered;
- out (to Redis, through routinely.records.model_usage): one usage record per session and the daily
  totals, after every metered response; to the runner: `Gateway.stop_reason`
  (`budget_exceeded`) and `Gateway.last_request` (liveness).
Model credentials never cross into the session: `session_env()` gives it only the gateway's
address and token, and `WITHHELD` names what the runner must never pass through.

Modules: `route` (which paths pass), `vendors` (what differs per vendor), `jsonpick` (reading
a body's few fields as it passes), `meter`, `door` (the cap on a door's connections, shared
with the github connector), `server`, `session`.
"""
from workers.gateway.server import Gateway
from workers.gateway.vendors import VENDORS, WITHHELD, session_env

__all__ = ["Gateway", "VENDORS", "WITHHELD", "session_env"]
