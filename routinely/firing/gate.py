"""Route a GitHub event, then decide who may fire: chain depth and roles, before admission.

The one place a webhook's routing happens (app/webhooks.py calls `route` once per
delivery). Order, cheapest first: the catalog's match (pure, indexed, no I/O), the chain
depth (one MGET, and only for events a bot sent), the roles (one GET of the role cache,
and only for matched triggers that declare `roles`). GitHub is never asked here: the
answer to GitHub must not wait on GitHub. A role the cache does not hold is decided by the
worker before the session runs (workers/role_check.py): the session is made with a
`RoleCheck` on its record. A refused firing is handed on as a drop with its reason
(`chain_depth`, `role`) and a detail the events page shows; it consumes no admission window.
"""
from __future__ import annotations

from typing import Any

import redis

from routinely.firing import chain
from routinely.routines.catalog import Catalog
from routinely.config import Settings
from routinely.firing.roles import RoleCheck, Roles
from routinely.routine_file import GithubTrigger
from routinely.firing.start import Routed
from routinely.firing.start_plan import Refused

ROLE = "role"
NO_APP = "no GitHub App is configured (GITHUB_APP_ID, GITHUB_PRIVATE_KEY) to ask GitHub for roles"


def route(catalog: Catalog, conn: redis.Redis, settings: Settings,
          kind: str, action: str | None, repo: str, payload: dict[str, Any],
          record: dict[str, Any] | None = None) -> Routed:
    """The routines this event fires, and those refused with why. `record` as in Catalog.matches.
    No call to GitHub: a routine whose actor's role is not cached fires with a role check."""
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
    allowed, refused, checks = list(paused), [], {}
    known: dict[str, str | None] = {}  # one cache read per delivery, whatever the number of routines
    for routine, triggers in live:
        check = _role_check(triggers, repo, payload)
        if check is None:
            allowed.append(routine)
            continue
        if isinstance(check, str):
            refused.append(Refused(routine, ROLE, check))
            continue
        if not settings.github_app:
            refused.append(Refused(routine, ROLE, NO_APP))
            continue
        if "role" not in known:
            known["role"] = Roles.cached(conn, repo, check.actor)
        role = known["role"]
        why = check.refusal(role) if role is not None else None
        if why is not None:
            refused.append(Refused(routine, ROLE, why))
            continue
        allowed.append(routine)
        if role is None:
            checks[routine.key] = check  # the worker asks GitHub before the session runs
    return Routed(allowed, refused, depth, checks)


def _role_check(triggers: list[GithubTrigger], repo: str, payload: dict[str, Any]) -> RoleCheck | str | None:
    """None when a matched trigger lets anyone fire; the check its roles ask for; or, when
    no role can be asked for, why not."""
    if any(not trig.roles for trig in triggers):
        return None
    sender = payload.get("sender")
    login = sender.get("login") if isinstance(sender, dict) else None
    if not isinstance(login, str) or not login:
        return "the event names no sender whose role could be checked"
    inst = payload.get("installation")
    installation = inst["id"] if isinstance(inst, dict) and isinstance(inst.get("id"), int) else None
    wanted = tuple(sorted({r for trig in triggers for r in trig.roles}))
    return RoleCheck(wanted, login, repo, installation)
