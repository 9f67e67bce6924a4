"""Credential doors: a session uses a stored secret through the worker, and never holds it.

What crosses its border:
- in (from the session, over one unix socket per declared service, bridged inside the sandbox
  to 127.0.0.1:PORT like every door): plain HTTP requests to `<NAME>_URL`. Only plain paths
  pass (no dot segments, encoded separators, backslashes), and only inside the service's
  `paths` allowlist when it has one; anything else is 403 and a line in the session log. What
  one session may make the worker hold is capped (`server`: connections, heads, bodies,
  time), with the model gateway's figures and its connection cap (workers/gateway/door.py);
- out (to the declared origin only, over TLS when it is https): the same request with the
  declared header filled from the secret (the session's own copy of that header is dropped),
  never a redirect followed; the answer streamed back as it comes. The origin obeys the
  address rule (`dial`: workers/sandbox/addresses.py), unless its host:port is listed in
  ROUTINELY_SERVICES_ALLOW_HOSTS;
- out (to the session log): one line per request — method, path (no query), status — never
  a header.

Modules: `dial` (the address rule at connect time), `server` (the doors of one session),
`session` (open them for a session: sockets, doors, the `<NAME>_URL` variables).
"""
from workers.credentials.server import CredentialDoors
from workers.credentials.session import open_services

__all__ = ["CredentialDoors", "open_services"]
