"""Pages: a session's page (the session URL) and the login form for ROUTINELY_ADMIN_TOKEN."""
from __future__ import annotations

from flask import Blueprint, current_app, make_response, redirect, render_template, request

from app.auth import COOKIE, presented_token, token_ok
from routinely import sessions, transcript

bp = Blueprint("pages", __name__)


@bp.before_request
def login_first():
    if request.endpoint in ("pages.login", "pages.login_post"):
        return None
    if not token_ok(presented_token()):
        return redirect(f"/login?next={request.path}", 303)
    return None


@bp.get("/sessions/<session_id>")
def session_page(session_id: str):
    state = current_app.extensions["routinely"]
    found = sessions.get(state.conn, state.settings, session_id)
    if found is None:
        return render_template("missing.html", session_id=session_id), 404
    return render_template("session.html", s=found, steps=transcript.steps(transcript.read(state.conn, session_id)))


@bp.get("/sessions/<session_id>/transcript")
def session_transcript(session_id: str):
    """The transcript and usage part of the page, for its live refresh."""
    state = current_app.extensions["routinely"]
    found = sessions.get(state.conn, state.settings, session_id)
    if found is None:
        return "", 404
    return render_template("_transcript.html", s=found, steps=transcript.steps(transcript.read(state.conn, session_id)))


@bp.get("/login")
def login():
    return render_template("login.html", next=_safe_next(request.args.get("next")), failed=False)


@bp.post("/login")
def login_post():
    token = request.form.get("token", "")
    target = _safe_next(request.form.get("next"))
    if not token_ok(token):
        return render_template("login.html", next=target, failed=True), 401
    resp = make_response(redirect(target, 303))
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
    return resp


def _safe_next(target: str | None) -> str:
    # only local paths: no open redirect through the login form
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"
