"""The JSON API: sessions, events, health."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from app import params
from app.auth import require_admin
from app.responses import error, json_response
from routinely import catalog, events, routines_view, session_log, sessions
from routinely.start import iso

bp = Blueprint("api", __name__)
bp.before_request(require_admin)


def _limit() -> int:
    return params.limit(request.args)


def _no_session(session_id: str) -> Response:
    return error(404, f"no session {session_id!r}: `routinely sessions` lists them")


@bp.get("/api/sessions")
def list_sessions():
    state = current_app.extensions["routinely"]
    return json_response(sessions.listing(state.conn, state.settings, request.args.get("routine") or None, _limit()))


@bp.get("/api/sessions/<session_id>")
def get_session(session_id: str):
    state = current_app.extensions["routinely"]
    found = sessions.get(state.conn, state.settings, session_id)
    if found is None:
        return _no_session(session_id)
    return json_response(found)


@bp.get("/api/events")
def list_events():
    return json_response(events.listing(current_app.extensions["routinely"].conn, _limit()))


@bp.get("/api/sessions/<session_id>/log")
def session_log_text(session_id: str):
    """The log as plain text; `?after=CURSOR` returns only newer lines (the page polls it).
    The cursor of the last line is in the X-Log-Cursor header."""
    state = current_app.extensions["routinely"]
    after = params.log_cursor(request.args)
    if sessions.get_raw(state.conn, session_id) is None:
        return _no_session(session_id)
    lines, cursor = session_log.read(state.conn, session_id, after)
    text = "".join(line + "\n" for line in lines)
    return Response(text, mimetype="text/plain", headers={"X-Log-Cursor": cursor or ""})


@bp.post("/api/sessions/<session_id>/cancel")
def cancel_session(session_id: str):
    state = current_app.extensions["routinely"]
    outcome = sessions.cancel(state.conn, session_id, iso(state.settings.clock()))
    if outcome == "unknown":
        return _no_session(session_id)
    if outcome == "finished":
        return error(409, f"session {session_id} has already finished")
    return json_response({"id": session_id, "result": outcome})


@bp.get("/api/routines")
def list_routines():
    """The applied routines with their drop counters (reason -> count, last drop, window reset)."""
    conn = current_app.extensions["routinely"].conn
    return json_response(routines_view.listing(conn, catalog.load(conn)))
