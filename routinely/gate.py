"""Route a GitHub event, then decide who may fire: chain depth and roles, before admission.

The one place a webhook's routing happens (app/webhooks.py calls `route` once per
delivery). Order, cheapest first: the catalog's match (pure, indexed, no I/O), the chain
depth (one MGET, and only for events a bot sent), the roles (an HTTP call to GitHub on a
cache miss, and only for matched triggers that declare `roles`). A refused firing is
handed on as a drop with its reason (`chain_depth`, `role`) and a detail the events page
shows; it consumes no admission window.
"""
from __future__ import annotations

from typing import Any

import redis

from routinely import chain
from routinely.catalog import Catalog
from routinely.config import Settings
from routinely.roles import RoleError, Roles
from routinely.routine_file import GithubTrigger
from routinely.start import Routed
from routinely.start_plan import Refused

ROLE = "role"


def route(catalog: Catalog, conn: redis.Redis, settings: Settings, roles: Roles,
          kind: str, action: str | None, repo: str, payload: dict[str, Any],
          record: dict[str, Any] | None = None) -> Routed:
    """The routines this event fires, and those refused with why. `record` as in Catalog.matches."""
    matches = catalog.matches(kind, action, repo, payload, record)
    if not matches:
        return Routed([])
    live = [(routine, triggers) for routine, triggers in matches if not routine.paused]
    paused = [routine for routine, _ in matches if routine.paused]  # recorded as skipped by start
    if not live:
        return Routed(paused)
    depth, cause = chain.depth_of(conn, repo, payload)
    if depth > settings.max_chain_depth:
        detail = (f"chain depth {depth} is past ROUTINELY_MAX_CHAIN_DEPTH {settings.max_chain_depth}"
                  + (f" (caused by session {cause})" if cause else ""))
        return Routed(paused, [Refused(r, chain.REASON, detail) for r, _ in live], depth)
    allowed, refused = list(paused), []
    asked: dict[str, str] = {}  # one look-up per delivery, whatever the number of routines
    for routine, triggers in live:
        why = _refusal(triggers, conn, roles, repo, payload, asked)
        if why is None:
            allowed.append(routine)
        else:
            refused.append(Refused(routine, ROLE, why))
    return Routed(allowed, refused, depth)


def _refusal(triggers: list[GithubTrigger], conn: redis.Redis, roles: Roles, repo: str,
             payload: dict[str, Any], asked: dict[str, str]) -> str | None:
    """None when one of the matched triggers lets this actor fire; else why not."""
    if any(not trig.roles for trig in triggers):
        return None
    sender = payload.get("sender")
    login = sender.get("login") if isinstance(sender, dict) else None
    if not isinstance(login, str) or not login:
        return "the event names no sender whose role could be checked"
    if "role" not in asked:
        try:
            asked["role"] = roles.role(conn, repo, login, payload)
        except RoleError as exc:
            asked["role"] = ""
            asked["error"] = str(exc)
    if asked.get("error"):
        return asked["error"]
    role = asked["role"]
    if any(role in trig.roles for trig in triggers):
        return None
    wanted = sorted({r for trig in triggers for r in trig.roles})
    return f"{login} has role {role} on {repo}; the trigger wants {', '.join(wanted)}"

