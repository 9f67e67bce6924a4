"""The per-session model gateway: the agent's only way to its model, and the meter of every token.

What crosses its border:
- in (from the session, over the `gateway` door's unix socket): vendor API requests under
  /anthropic, /openai and /gemini, carrying the per-session token where the vendor's key
  would be; anything else, or any other token, is answered 401;
- out (to the vendor, ROUTINELY_*_API_URL): the same requests with the service's own
  credential swapped in, responses (SSE included) streamed back unbuffered;
- out (to Redis, through routinely.model_usage): one usage record per session and the daily
  totals, after every metered response; to the runner: `Gateway.stop_reason`
  (`budget_exceeded`) and `Gateway.last_request` (liveness).
Model credentials never cross into the session: `session_env()` gives it only the gateway's
address and token, and `WITHHELD` names what the runner must never pass through.
"""
from workers.gateway.server import Gateway
from workers.gateway.vendors import VENDORS, WITHHELD, session_env

__all__ = ["Gateway", "VENDORS", "WITHHELD", "session_env"]
