"""Steering routines: run now, pause, resume, API tokens.

The one management surface: the pages, the JSON API and the CLI call these functions and
nothing else to change a routine, so the three cannot drift apart. Each raises
`Refused` with the one line to show and the HTTP status that line deserves.
"""
from __future__ import annotations

from typing import Any

import redis

from routinely.routines import api_tokens, catalog
from routinely.storage import keys
from routinely.config import Settings
from routinely.routine_file import Routine
from routinely.firing.start import FireRefused, Firing, fire_one


Refused = FireRefused  # one refusal for every way in: message, HTTP status, retry_after


def find(conn: redis.Redis, ref: str) -> Routine:
    """A routine by `account/name` (or a name one account has). Raises Refused (404)."""
    try:
        return catalog.load(conn).find(ref)
    except LookupError as exc:
        raise Refused(str(exc), 404) from None


def run_now(settings: Settings, conn: redis.Redis, ref: str, text: str | None = None) -> dict[str, Any]:
    """Run a routine now, as a person does (trigger kind `manual`), with optional text.

    A paused routine is refused before anything is recorded (a person asked, not a trigger).
    """
    if text is not None and not isinstance(text, str):
        raise Refused("text must be a string", 400)
    routine = find(conn, ref)
    if routine.paused:
        raise Refused(f"routine {routine.key} is paused: resume it first (`routinely resume {routine.key}`)", 400)
    return fire_one(settings, conn, ref, Firing(kind="manual", text=text or None))


def set_paused(conn: redis.Redis, ref: str, paused: bool) -> Routine:
    """Pause or resume a routine in the stored configuration (re-applied whole, validated).

    The next `routinely apply FILE` sets `paused` from the file again: the file stays the
    source of truth. Raises Refused (404) for an unknown routine.
    """
    cat = catalog.load(conn)
    try:
        routine = cat.find(ref)
    except LookupError as exc:
        raise Refused(str(exc), 404) from None
    if routine.paused == paused:
        return routine
    data = catalog.as_file(cat.config)
    for spec in data["routines"]:
        if f"{spec['account']}/{spec['name']}" == routine.key:
            spec["paused"] = paused
    after, _ = catalog.apply(conn, data, None)
    return after.routines[routine.key]


def tokens(conn: redis.Redis, routine: Routine | None = None) -> list[dict[str, Any]]:
    """API triggers (ids only, never tokens), of one routine or all; `live` false once revoked."""
    owners = {t.decode(): r.decode() for t, r in conn.hgetall(keys.API_TRIGGERS).items()}
    if routine is not None:
        owners = {t: r for t, r in owners.items() if r == routine.key}
    ids_ = sorted(owners)
    pipe = conn.pipeline(transaction=False)
    for trigger_id in ids_:
        pipe.exists(keys.trigger_tokens(trigger_id))
    rows = []
    for trigger_id, live in zip(ids_, pipe.execute()):
        account, _, name = owners[trigger_id].partition("/")
        rows.append({"trigger_id": trigger_id, "name": name, "account": account, "live": bool(live)})
    return rows


def create_token(conn: redis.Redis, settings: Settings, ref: str) -> dict[str, str]:
    """A new API trigger and its token (shown once, stored hashed). Raises Refused."""
    routine = find(conn, ref)
    try:
        trigger_id, token = api_tokens.create(conn, routine)
    except ValueError as exc:
        raise Refused(str(exc), 400) from None
    return {"trigger_id": trigger_id, "token": token,
            "fire_url": f"{settings.public_url}/v1/claude_code/routines/{trigger_id}/fire"}


def revoke_token(conn: redis.Redis, ref: str, trigger_id: str) -> str:
    """Revoke one API trigger of a routine. Raises Refused (404) when it is not that routine's."""
    routine = find(conn, ref)
    if not trigger_id.startswith("trig_") or api_tokens.routine_of(conn, trigger_id) != routine.key:
        raise Refused(f"routine {routine.key} has no API trigger {trigger_id!r}", 404)
    return api_tokens.revoke(conn, catalog.Catalog.empty(), trigger_id)[0]
