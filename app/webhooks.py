"""POST /webhooks/github: verify, dedup, route, admit, start — then answer GitHub."""
from __future__ import annotations

import orjson
from flask import Blueprint, current_app, request

from app.responses import error, json_response
from app.signature import verify
from filters import EVENT_KINDS
from routinely import gate
from routinely.deliveries import DELIVERY_ID, decode

bp = Blueprint("webhooks", __name__)


@bp.post("/webhooks/github")
def receive():
    state = current_app.extensions["routinely"]
    settings = state.settings
    if not settings.webhook_secret:
        return error(503, "GITHUB_WEBHOOK_SECRET is not set on this server: set it to the App's webhook secret")
    body = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: 413 before we read it
    if not verify((settings.webhook_secret, settings.webhook_secret_previous), body, request.headers.get("X-Hub-Signature-256")):
        return error(401, "X-Hub-Signature-256 is missing or does not match: check the App's webhook secret")
    event = request.headers.get("X-GitHub-Event")
    delivery = request.headers.get("X-GitHub-Delivery")
    if not event or not delivery:
        return error(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
    if not DELIVERY_ID.match(delivery):
        return error(400, "X-GitHub-Delivery is not a delivery id")
    if request.mimetype != "application/json":
        return error(415, "the webhook must send application/json: set the App's content type to JSON")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error(400, "the body is not valid JSON")
    if not isinstance(payload, dict):
        return error(400, "the body must be a JSON object")
    if event == "ping":
        return json_response({"ok": True, "zen": payload.get("zen")})

    firing = decode(event, delivery, payload, body)
    kind, _, action = firing.event.partition(".")
    if kind in EVENT_KINDS and firing.repository:
        route = lambda catalog: gate.route(catalog, state.conn, settings, state.roles,  # noqa: E731
                                           kind, action or None, firing.repository, payload)
    else:
        route = lambda catalog: []  # noqa: E731  (acknowledged and recorded, starts nothing)
    outcome = state.starter.fire(firing, route)
    if outcome.duplicate:
        return json_response({"delivery": delivery, "duplicate": True}, 200)
    return json_response(
        {
            "delivery": delivery,
            "sessions": [{"id": s["id"], "routine": s["routine"]} for s in outcome.sessions],
            "dropped": [{"routine": d["routine"], "reason": d["reason"]} for d in outcome.dropped],
        },
        202,
    )
