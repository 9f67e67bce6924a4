"""The JSON API: routines (and steering them), sessions, events with their explanation,
schedules, usage. Every route is a thin layer over the routinely/ functions the pages and
the CLI call too."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, abort, current_app, request

from app import params
from app.auth import require_admin
from app.responses import error, json_response
from routinely.routines import control
from routinely.records import events, refusals, routines_view, session_log, sessions
from routinely.firing import replay, usage
from routinely.secrets import secret_store
from routinely.routines import api_tokens
from routinely.when import iso

bp = Blueprint("api", __name__)
bp.before_request(require_admin)


def _state():
    return current_app.extensions["routinely"]


def _limit() -> int:
    """`?limit=`, default 100; anything but 1..MAX_LIMIT in ASCII digits answers 400."""
    return params.limit(request.args)


def _refused(exc: control.Refused) -> Response:
    resp = error(exc.status, str(exc))
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def _body() -> dict[str, Any]:
    """An optional JSON object body; anything else answers 400 before anything is done."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        abort(error(400, "the body is not valid JSON"))
    if not isinstance(body, dict):
        abort(error(400, 'the body must be a JSON object such as {"text": "..."}'))
    return body


def _no_session(session_id: str) -> Response:
    return error(404, f"no session {session_id!r}: `routinely sessions` lists them")


@bp.get("/api/sessions")
def list_sessions():
    state = _state()
    status, kind = request.args.get("status") or None, request.args.get("kind") or None
    if status and status not in sessions.STATUSES:
        return error(400, f"status must be one of {', '.join(sessions.STATUSES)}")
    if kind and kind not in ("github", "api", "schedule", "manual"):
        return error(400, "kind must be github, api, schedule or manual")
    try:  # ?routine= is ACCOUNT/NAME, or a name one account has (sessions.index_of)
        rows, _ = sessions.page(state.conn, state.settings, request.args.get("routine") or None, status, kind,
                                params.offset(request.args), _limit())
    except control.Refused as exc:
        return _refused(exc)
    return json_response(rows)


@bp.get("/api/sessions/<session_id>")
def get_session(session_id: str):
    state = _state()
    found = sessions.get(state.conn, state.settings, session_id)
    if found is None:
        return _no_session(session_id)
    return json_response(found)


@bp.get("/api/sessions/<session_id>/log")
def session_log_text(session_id: str):
    """The log as plain text; `?after=CURSOR` returns only newer lines (the page polls it).
    The cursor of the last line is in the X-Log-Cursor header."""
    state = _state()
    after = params.log_cursor(request.args)
    if sessions.load(state.conn, session_id) is None:
        return _no_session(session_id)
    lines, cursor = session_log.read(state.conn, session_id, after)
    text = "".join(line + "\n" for line in lines)
    return Response(text, mimetype="text/plain", headers={"X-Log-Cursor": cursor or ""})


@bp.post("/api/sessions/<session_id>/cancel")
def cancel_session(session_id: str):
    state = _state()
    outcome = sessions.cancel(state.conn, session_id, iso(state.settings.clock()))
    if outcome == "unknown":
        return _no_session(session_id)
    if outcome == "finished":
        return error(409, f"session {session_id} has already finished")
    return json_response({"id": session_id, "result": outcome})


@bp.get("/api/events")
def list_events():
    outcome = request.args.get("outcome")
    if outcome == "refused":  # deliveries refused at the door: no event record, a bounded list of their own
        return json_response(refusals.listing(_state().conn, _limit()))
    if outcome is not None:
        return error(400, "outcome takes only refused (deliveries refused at the door)")
    return json_response(events.listing(_state().conn, _limit()))


@bp.post("/api/events/<event_id>/replay")
def replay_event(event_id: str):
    """Route a recorded event again, through admission unless `force` (routinely.firing.replay)."""
    state = _state()
    body = _body()
    routine, force = body.get("routine"), body.get("force", False)
    if routine is not None and not isinstance(routine, str) or not isinstance(force, bool):
        return error(400, "routine must be a string and force a boolean")
    try:
        done = replay.replay(state.settings, state.conn, event_id, routine, force, state.starter)
    except replay.ReplayRefused as exc:
        return error(exc.status, str(exc))
    return json_response(done, 201 if done["sessions"] else 200)


@bp.get("/api/events/<event_id>")
def get_event(event_id: str):
    """One event (by event or delivery id); `explanation` when it started nothing."""
    state = _state()
    raw = events.find(state.conn, event_id)
    if raw is None:
        return error(404, f"no event or delivery {event_id!r} (events are kept 7 days): GET /api/events lists them")
    return json_response({**events.to_public(raw), "explanation": events.explain(raw, state.catalog())})


@bp.get("/api/routines")
def list_routines():
    """The applied routines: triggers in words, next run, today's runs against the cap, drops."""
    state = _state()
    return json_response(routines_view.listing(state.conn, state.catalog(), state.settings))


@bp.get("/api/routines/<account>/<name>")
def get_routine(account: str, name: str):
    state = _state()
    cat = state.catalog()
    routine = cat.routines.get(f"{account}/{name}")
    if routine is None:
        return error(404, f"no routine {account}/{name}: GET /api/routines lists them")
    return json_response(routines_view.detail(state.conn, cat, state.settings, routine))


@bp.post("/api/routines/<account>/<name>/run")
def run_routine(account: str, name: str):
    state = _state()
    text = _body().get("text")
    if text is not None and not isinstance(text, str):
        return error(400, "text must be a string")
    try:
        return json_response(control.run_now(state.settings, state.conn, _ref(account, name), text), 201)
    except control.Refused as exc:
        return _refused(exc)


@bp.post("/api/routines/<account>/<name>/pause")
def pause_routine(account: str, name: str):
    return _set_paused(account, name, True)


@bp.post("/api/routines/<account>/<name>/resume")
def resume_routine(account: str, name: str):
    return _set_paused(account, name, False)


def _set_paused(account: str, name: str, paused: bool) -> Response:
    try:
        routine = control.set_paused(_state().conn, _ref(account, name), paused)
    except control.Refused as exc:
        return _refused(exc)
    return json_response({"name": routine.name, "account": routine.account, "paused": routine.paused})


@bp.get("/api/routines/<account>/<name>/tokens")
def list_tokens(account: str, name: str):
    conn = _state().conn
    try:
        return json_response(api_tokens.with_dates(conn, control.tokens(conn, control.find(conn, _ref(account, name)))))
    except control.Refused as exc:
        return _refused(exc)


@bp.post("/api/routines/<account>/<name>/tokens")
def create_token(account: str, name: str):
    state = _state()
    try:
        return json_response(control.create_token(state.conn, state.settings, _ref(account, name)), 201)
    except control.Refused as exc:
        return _refused(exc)


@bp.delete("/api/routines/<account>/<name>/tokens/<trigger_id>")
def revoke_token(account: str, name: str, trigger_id: str):
    try:
        revoked = control.revoke_token(_state().conn, _ref(account, name), trigger_id)
    except control.Refused as exc:
        return _refused(exc)
    return json_response({"revoked": [revoked]})


@bp.get("/api/schedules")
def list_schedules():
    state = _state()
    return json_response(routines_view.schedules(state.conn, state.catalog(), state.settings.clock()))


@bp.get("/api/usage")
def get_usage():
    state = _state()
    return json_response(usage.usage(state.conn, state.catalog(), state.settings.clock()))


@bp.get("/api/secrets")
def list_secrets():
    state = _state()
    return json_response(secret_store.SecretStore.of(state.settings, state.conn, need_key=False).list())


@bp.put("/api/secrets/<name>")
def set_secret(name: str):
    """Write-only: the answer is the secret's listing row, never its value."""
    state, body = _state(), _body()
    value = body.get("value")
    if not isinstance(value, str):
        return error(400, 'the body is {"value": "...", "routine": "ACCOUNT/NAME"} or {"value": "...", "account": "A"}')
    try:
        scope = _secret_scope(body.get("routine"), body.get("account"))
        new = secret_store.SecretStore.of(state.settings, state.conn).set(name, value, scope)
    except secret_store.NoKey as exc:
        return error(503, str(exc))
    except secret_store.SecretError as exc:
        return error(400, str(exc))
    row = next(r for r in secret_store.SecretStore(state.conn, None).list(scope) if r["name"] == name)
    return json_response(row, 201 if new else 200)


@bp.delete("/api/secrets/<name>")
def remove_secret(name: str):
    state = _state()
    try:
        scope = _secret_scope(request.args.get("routine"), request.args.get("account"))
        removed = secret_store.SecretStore(state.conn, None).remove(name, scope)
    except secret_store.SecretError as exc:
        return error(400, str(exc))
    if not removed:
        return error(404, f"no secret {name!r} in {scope}")
    return json_response({"removed": name, "scope": str(scope)})


def _secret_scope(routine: object, account: object) -> secret_store.Scope:
    if not isinstance(routine, (str, type(None))) or not isinstance(account, (str, type(None))):
        raise secret_store.SecretError("routine and account are strings")
    cat = _state().catalog()
    return secret_store.scope_of(cat.accounts, cat.find, routine or None, account or None)


def _ref(account: str, name: str) -> str:
    """Always ACCOUNT/NAME from a URL: never the name-only lookup the CLI allows."""
    if "/" in account or "/" in name:
        abort(error(404, "no such routine"))
    return f"{account}/{name}"
