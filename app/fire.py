"""POST /v1/claude_code/routines/{trigger_id}/fire — the API trigger, wire-compatible with the
hosted routines service: change the base URL and token, nothing else."""
from __future__ import annotations

import orjson
import redis
from flask import Blueprint, after_this_request, current_app, request

from app.responses import json_response
from routinely.firing import admission, idempotency
from routinely.routines import api_tokens
from routinely.storage import keys
from routinely.firing.start import Firing

bp = Blueprint("fire", __name__)

API_VERSION = "2023-06-01"
MAX_BODY = 256 * 1024  # alert bodies and stack traces fit; a runaway client does not


def api_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None):
    """The hosted service's error envelope. Refusals record nothing but a counter."""
    if status != 429:
        try:
            current_app.extensions["routinely"].conn.incr(keys.counter(f"fire_refused:{kind}"))
        except redis.RedisError:
            pass
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status, headers)


@bp.post("/v1/claude_code/routines/<trigger_id>/fire")
def fire(trigger_id: str):
    state = current_app.extensions["routinely"]
    conn, settings = state.conn, state.settings
    routine_key = api_tokens.routine_of(conn, trigger_id) if trigger_id.startswith("trig_") else None
    if routine_key is None:
        return api_error(404, "not_found_error", f"no routine trigger {trigger_id!r}")
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not api_tokens.check(conn, trigger_id, header[7:].strip()):
        return api_error(401, "authentication_error", "invalid bearer token for this trigger: `routinely token create` makes one")
    if request.headers.get("anthropic-version") != API_VERSION:
        return api_error(400, "invalid_request_error", f"anthropic-version: {API_VERSION} is required")
    betas = {b.strip() for b in request.headers.get("anthropic-beta", "").split(",") if b.strip()}
    if not betas & set(settings.api_betas):
        return api_error(400, "invalid_request_error", f"anthropic-beta must name {settings.api_betas[0]}")
    if (request.content_length or 0) > MAX_BODY:
        return api_error(413, "request_too_large", f"the body is over {MAX_BODY // 1024} KB")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY:
        return api_error(413, "request_too_large", f"the body is over {MAX_BODY // 1024} KB")
    text = None
    if raw.strip():
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return api_error(400, "invalid_request_error", "the body is not valid JSON")
        if not isinstance(body, dict):
            return api_error(400, "invalid_request_error", 'the body must be a JSON object such as {"text": "..."}')
        text = body.get("text")
        if text is not None and not isinstance(text, str):
            return api_error(400, "invalid_request_error", "text must be a string (JSON or Markdown inside it is passed as is)")

    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None:  # a retry answers the first call's session and starts nothing (routinely.firing.idempotency)
        try:
            held = idempotency.claim(conn, trigger_id, header[7:].strip(), idem_key, raw)
        except idempotency.KeyRefused as exc:
            return api_error(exc.status, "invalid_request_error", str(exc))
        if isinstance(held, str):
            return json_response({"type": "routine_fire", "claude_code_session_id": held,
                                  "claude_code_session_url": f"{settings.public_url}/sessions/{held}"},
                                 headers={"Idempotent-Replayed": "true"})
        after_this_request(lambda resp: idempotency.settle_answer(conn, held, resp.status_code, resp.get_data()) or resp)

    # a refused call records nothing but a counter: a paused routine is refused before the
    # start step (the script would record the firing as an event with the routine skipped)
    current = state.starter.cache.current(conn).routines.get(routine_key)
    if current is not None and current.api and current.paused:
        return api_error(400, "invalid_request_error", "the routine is paused")

    def route(catalog):
        routine = catalog.routines.get(routine_key)
        return [routine] if routine is not None and routine.api else []

    outcome = state.starter.fire(Firing(kind="api", text=text, routine=routine_key), route)
    if outcome.sessions or outcome.dropped:  # the token fired (a refusal before the start step records nothing)
        try:
            api_tokens.used(conn, trigger_id, settings.clock())
        except redis.RedisError:
            pass  # the firing is durable already: a missed "last used" must not turn it into a 500
    if outcome.skipped:
        return api_error(400, "invalid_request_error", "the routine is paused")
    if outcome.dropped:
        drop = outcome.dropped[0]
        return api_error(429, "rate_limit_error", admission.drop_message(drop["reason"], drop["retry_after"]),
                         {"Retry-After": str(drop["retry_after"])})
    if not outcome.sessions:
        return api_error(404, "not_found_error", "this trigger's routine was removed or no longer has an api trigger")
    sid = outcome.sessions[0]["id"]
    return json_response({
        "type": "routine_fire",
        "claude_code_session_id": sid,
        "claude_code_session_url": f"{settings.public_url}/sessions/{sid}",
    })
