"""Chained routines without loops: which session caused an issue, PR or comment, and how deep.

A session's chain depth counts the sessions in a row that led to it, itself included: 1
for a session that a person's event (or an API call, a schedule, `routinely run`) started.
After each write, the github connector calls `record` with the repository, the issue or PR
number it wrote to (or created) and its session's depth. When the webhook of that write
comes back — its sender a bot, and a record for that number — the sessions it starts are
one deeper. Past `Settings.max_chain_depth` the firing is dropped (`chain_depth`), so a
routine that comments on the issue that fired it ends after a few rounds.

The record is the last writer's (one key per number, `keys.chain`): a person's event on
the same issue starts a new chain at depth 1 whatever the record says, since only bot
senders are looked up.
"""
from __future__ import annotations

from typing import Any

import redis

from routinely.storage import keys

ROOT_DEPTH = 1
REASON = "chain_depth"


def record(conn_or_pipe: Any, repo: str, number: int | str, session_id: str, depth: int) -> None:
    """Note that session `session_id`, at chain `depth`, wrote to `repo`'s issue/PR `number`.

    `number` may also be a ref (`refs/heads/claude/x`) for a push. Works on a client or
    inside the caller's pipeline (the command is only queued then); durable once it runs.
    """
    conn_or_pipe.set(keys.chain(repo, str(number)), f"{int(depth)} {session_id}", ex=keys.CHAIN_TTL)


def subjects(payload: dict[str, Any]) -> list[str]:
    """What an event is about, as `record` names it: issue/PR numbers, refs."""
    out: list[str] = []
    for obj in ("issue", "pull_request"):
        number = (payload.get(obj) or {}).get("number") if isinstance(payload.get(obj), dict) else None
        if isinstance(number, int):
            out.append(str(number))
    if isinstance(payload.get("ref"), str):  # push
        out.append(payload["ref"])
    run = payload.get("workflow_run")
    if isinstance(run, dict):
        out += [str(pr["number"]) for pr in run.get("pull_requests") or []
                if isinstance(pr, dict) and isinstance(pr.get("number"), int)]
        if isinstance(run.get("head_branch"), str):
            out.append("refs/heads/" + run["head_branch"])
    return list(dict.fromkeys(out))


def caused_by_bot(payload: dict[str, Any]) -> bool:
    sender = payload.get("sender")
    return isinstance(sender, dict) and sender.get("type") == "Bot"


def depth_of(conn: redis.Redis, repo: str, payload: dict[str, Any]) -> tuple[int, str | None]:
    """(depth, causing session) for the sessions this event would start.

    Costs nothing for an event a person sent; one MGET for a bot's.
    """
    if not caused_by_bot(payload):
        return ROOT_DEPTH, None
    names = subjects(payload)
    if not names:
        return ROOT_DEPTH, None
    best: tuple[int, str | None] = (ROOT_DEPTH, None)
    for raw in conn.mget([keys.chain(repo, name) for name in names]):
        if raw:
            depth, _, session = raw.decode().partition(" ")
            if depth.isdigit() and int(depth) + 1 > best[0]:
                best = (int(depth) + 1, session)
    return best
