"""Decode: a verified GitHub delivery into a Firing (event name, repository, installation changes);
and keep the payload of one that matched but started nothing, for a replay (routinely.firing.replay)."""
from __future__ import annotations

import re
from typing import Any

import redis

from filters import COMMAND_EVENTS, EVENT_KINDS, parse_command
from routinely.firing import admission
from routinely.storage import keys
from routinely.firing.start import Firing, Outcome

DELIVERY_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SET_ACTIONS = {"created", "new_permissions_accepted", "unsuspend"}


def decode(event: str, delivery: str, payload: dict[str, Any], body: bytes) -> Firing:
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    repo = payload.get("repository")
    full_name = repo.get("full_name") if isinstance(repo, dict) else None
    firing = Firing(
        kind="github",
        event=f"{event}.{action}" if action else event,
        delivery=delivery,
        repository=full_name if isinstance(full_name, str) else None,
        claim=keys.delivery(delivery),
    )
    if event in EVENT_KINDS and firing.repository:
        firing.payload = body  # the agent gets it as $ROUTINELY_EVENT_FILE
    firing.installations = installation_changes(event, action, payload)
    if firing.event in COMMAND_EVENTS:
        comment = payload.get("comment")
        said = comment.get("body") if isinstance(comment, dict) else None
        found = parse_command(said) if isinstance(said, str) else None
        if found:  # the session's trigger says which /command, and its line reaches the agent as text
            firing.command, firing.text = found
    return firing


def installation_changes(event: str, action: str | None, payload: dict[str, Any]) -> list[list[str]]:
    """Which repositories an installation now covers (for installation tokens)."""
    inst = payload.get("installation")
    raw_id = inst.get("id") if isinstance(inst, dict) else None
    if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)) or not str(raw_id).isascii() or not str(raw_id).isdigit():
        return []  # GitHub's installation id is a number; anything else names no installation
    inst_id = str(raw_id)

    def names(field: str) -> list[str]:
        repos = payload.get(field)
        if not isinstance(repos, list):
            return []  # absent, null or the wrong shape: no repositories to record
        return [r["full_name"].lower() for r in repos if isinstance(r, dict) and isinstance(r.get("full_name"), str)]

    if event == "installation":
        if action in _SET_ACTIONS:
            return [["set", n, inst_id] for n in names("repositories")]
        if action == "deleted":
            return [["del", n] for n in names("repositories")]
    elif event == "installation_repositories":
        return [["set", n, inst_id] for n in names("repositories_added")] + [
            ["del", n] for n in names("repositories_removed")
        ]
    return []


def keep_payload(conn: redis.Redis, firing: Firing, outcome: Outcome) -> bool:
    """Keep the body of a delivery that matched routines but made no session (dropped by
    admission, or skipped as paused) at keys.payload(event id) for keys.EVENT_TTL, so it can be replayed
    once the cause is gone; a delivery that made a session kept it inside the start step.
    One SET after the start step, only on such deliveries; False when Redis failed (the
    event stands, recorded: only its replay is lost)."""
    # an admission drop or a pause passes; a firing refused by `role` or `chain_depth` (a
    # stranger's event, a runaway chain) would be refused again, and its body is not kept
    replayable = outcome.skipped or any(d["reason"] in admission.REASONS for d in outcome.dropped)
    if not firing.payload or outcome.duplicate or outcome.sessions or not replayable:
        return False
    try:
        conn.set(keys.payload(outcome.event_id), firing.payload, ex=keys.EVENT_TTL)
    except redis.RedisError:
        return False
    return True
