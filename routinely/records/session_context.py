"""What a session row needs beyond its record: how long it ran, what started it (the pull
request or issue of a github event, the text of an API firing) and the prompt its agent got.

Read-only over the session record and its event's payload (keys.payload, kept EVENT_TTL): the
subject is taken from the payload the session ran with, never stored twice. The prompt is the
runner's bounded copy on the record (field `prompt`, written by workers/run.py) when it kept one; for an
older session it is rebuilt from the routine's current prompt and the payload by the same
function the runner calls (routinely.routines.prompt.build), and says so.
"""
from __future__ import annotations

from typing import Any

import orjson
import redis

from routinely.storage import keys  # prompt: the very function the runner calls
from routinely.routines import prompt
from routinely.records import sessions
from routinely import when
from routinely.routines.catalog import Catalog

PROMPT_FIELD = "prompt"  # the session record's bounded copy of its agent's prompt (the runner writes it)
PROMPT_KEPT = 16 * 1024  # bytes of UTF-8 kept: a routine prompt and its trigger's context, not a whole payload
TEXT_SHOWN = 80  # characters of an API firing's text in a row before it folds


def duration(s: dict[str, Any], now: float) -> dict[str, Any] | None:
    """`{"text": "3 min 5 s", "running": bool}`: started → finished, or running for so long;
    None before it started."""
    started = s.get("started_at")
    if not started:
        return None
    begin = when.parse_iso(started)
    end = when.parse_iso(s["finished_at"]) if s.get("finished_at") else None
    running = end is None and s.get("status") not in sessions.FINAL
    if end is None and not running:
        return None  # ended without a finish time: no honest duration
    return {"text": span_words((end if end is not None else now) - begin), "running": running}


def span_words(seconds: float) -> str:
    """`45 s`, `3 min 5 s`, `2 h 4 min`, `3 days 2 h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60} min" if s % 3600 // 60 else f"{s // 3600} h"
    return f"{s // 86_400} days {s % 86_400 // 3600} h"


def subject(event: str | None, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The pull request or issue a github event is about: {kind, number, title, url, repository};
    None for other events (push, release, workflow run…)."""
    name = (event or "").partition(".")[0]
    if name.startswith("pull_request"):
        item, kind = payload.get("pull_request"), "pull request"
    elif name in ("issues", "issue_comment"):
        item = payload.get("issue")
        kind = "pull request" if isinstance(item, dict) and item.get("pull_request") else "issue"
    else:
        return None
    if not isinstance(item, dict) or not isinstance(item.get("number"), int):
        return None
    url = item.get("html_url")
    return {
        "kind": kind,
        "number": item["number"],
        "title": str(item.get("title") or ""),
        "url": url if isinstance(url, str) and url.startswith("https://") else None,  # never a javascript: link
        "repository": str((payload.get("repository") or {}).get("full_name") or ""),
    }


def folded(text: str, limit: int = TEXT_SHOWN) -> dict[str, Any]:
    """An API text for a row: `short`, its first line cut to `limit` characters; `more`, whether
    the rest is folded away; `full`, the text."""
    first = text.strip().split("\n", 1)[0]
    short = first[:limit]
    return {"short": short, "more": short != text.strip(), "full": text}


def add_context(conn: redis.Redis, rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Each session row (sessions.to_public) with `context`: {duration, subject, text}. Reads the
    payloads of the github rows in two pipelined round trips (their event ids, then the bodies)."""
    github = [r for r in rows if r["trigger"].get("kind") == "github"]
    subjects = dict(zip((r["id"] for r in github), _subjects(conn, github)))
    for r in rows:
        text = r["trigger"].get("text")
        r["context"] = {
            "duration": duration(r, now),
            "subject": subjects.get(r["id"]),
            "text": folded(text) if isinstance(text, str) and text.strip() else None,
        }
    return rows


def _subjects(conn: redis.Redis, rows: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    if not rows:
        return []
    pipe = conn.pipeline(transaction=False)
    for r in rows:  # one field, not `sessions.load`: a page of whole records would bring their prompts along
        pipe.hget(keys.session(r["id"]), "event_id")
    wanted = [(i, event_id.decode()) for i, event_id in enumerate(pipe.execute()) if event_id]
    for _, event_id in wanted:
        pipe.get(keys.payload(event_id))
    bodies = dict(zip((i for i, _ in wanted), pipe.execute()))
    return [subject(r["trigger"].get("event"), _json(bodies.get(i))) for i, r in enumerate(rows)]


def _json(body: bytes | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def bounded(text: str, limit: int = PROMPT_KEPT) -> str:
    """`text` cut to `limit` bytes of UTF-8 (on a character boundary), saying so when cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore") + f"\n… [cut: the prompt was {len(raw)} bytes; {limit} kept]\n"


def prompt_of(conn: redis.Redis, cat: Catalog, session: sessions.Session) -> dict[str, Any] | None:
    """{"text", "kept"}: the runner's copy (kept true), else the prompt rebuilt from the routine's
    current prompt and the event's payload (kept false); None when the routine is gone."""
    if session.prompt:
        return {"text": session.prompt, "kept": True}
    routine = cat.routines.get(f"{session.account}/{session.routine}")
    if routine is None:
        return None
    payload = _json(conn.get(keys.payload(session.event_id))) if session.event_id else {}
    text = prompt.build(routine.prompt, session.trigger, payload or None)
    return {"text": bounded(text), "kept": False}
