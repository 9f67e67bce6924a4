"""The JSON API: sessions, events, health."""
from __future__ import annotations

from flask import Blueprint, current_app, request

from app.auth import require_admin
from app.responses import error, json_response
from routinely import events, sessions

bp = Blueprint("api", __name__)
bp.before_request(require_admin)


def _limit() -> int | None:
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= sessions.MAX_LIMIT:
        return None
    return int(raw)


@bp.get("/api/sessions")
def list_sessions():
    limit = _limit()
    if limit is None:
        return error(400, f"limit must be a whole number from 1 to {sessions.MAX_LIMIT}")
    state = current_app.extensions["routinely"]
    return json_response(sessions.listing(state.conn, state.settings, request.args.get("routine") or None, limit))


@bp.get("/api/sessions/<session_id>")
def get_session(session_id: str):
    state = current_app.extensions["routinely"]
    found = sessions.get(state.conn, state.settings, session_id)
    if found is None:
        return error(404, f"no session {session_id!r}: `routinely sessions` lists them")
    return json_response(found)


@bp.get("/api/events")
def list_events():
    limit = _limit()
    if limit is None:
        return error(400, f"limit must be a whole number from 1 to {sessions.MAX_LIMIT}")
    return json_response(events.listing(current_app.extensions["routinely"].conn, limit))
