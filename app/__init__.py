"""The HTTP edge: `create_app()` builds the Flask app; configuration comes in only here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
from flask import Flask, Response, request

from app import params
from app.responses import SecurityHeaders, error, json_response
from app.webhooks import MAX_BODY, WebhookDoor
from routinely.routines.catalog import Catalog, CatalogCache
from routinely.config import Settings
from routinely.firing.start import Starter
from routinely.storage.store import connect


SPEC = Path(__file__).resolve().parent.parent / "openapi.yaml"


@dataclass
class State:
    settings: Settings
    conn: redis.Redis
    starter: Starter

    def catalog(self) -> Catalog:
        """The applied configuration, compiled once per stored version (pages and API)."""
        return self.starter.cache.current(self.conn)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Raises routinely.config.ConfigError for a wrong setting."""
    settings = settings or Settings.from_env()
    conn = connect(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["routinely"] = State(settings, conn, Starter(conn, settings, CatalogCache()))

    from app import api, auth, fire, metrics, pages

    auth.configure(app)
    # POST /webhooks/github is answered in front of Flask (app/webhooks.py says why)
    app.wsgi_app = WebhookDoor(app.wsgi_app, app.extensions["routinely"], app.logger)  # type: ignore[method-assign]
    app.register_blueprint(fire.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    metrics.install(app)
    # outermost: every answer, the webhook door's and Flask's error pages included (app/responses.py)
    app.wsgi_app = SecurityHeaders(app.wsgi_app)  # type: ignore[method-assign]

    if SPEC.is_file():
        spec = SPEC.read_bytes()

        @app.get("/openapi.yaml")
        def openapi():
            return Response(spec, mimetype="application/yaml")

    @app.get("/healthz")
    def healthz():
        try:
            conn.ping()
        except redis.RedisError:
            return json_response({"status": "unavailable", "redis": "unreachable"}, 503)
        return json_response({"status": "ok"})

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def redis_down(exc: redis.RedisError):
        app.logger.warning("redis unavailable (%s): answered 503 to %s %s", type(exc).__name__, request.method, request.path)
        return error(503, "the store (Redis) is unavailable; retry shortly")

    @app.errorhandler(redis.ResponseError)
    def redis_refused(exc: redis.ResponseError):
        # Redis answered: an error reply is our bug (validation must stop bad input first), not an outage
        app.logger.error("redis refused a command on %s %s: %s", request.method, request.path, str(exc)[:200])
        return error(500, "internal error: the store refused a command; this is a bug, please report it")

    @app.errorhandler(params.BadParameter)
    def bad_parameter(exc: params.BadParameter):
        return error(400, str(exc))

    @app.errorhandler(413)
    def too_large(exc):
        return error(413, f"the body is over {MAX_BODY // (1024 * 1024)} MB")

    @app.errorhandler(404)
    def not_found(exc):
        return error(404, "no such endpoint")

    @app.errorhandler(405)
    def not_allowed(exc):
        allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or ()))
        return error(405, f"method not allowed on this endpoint; it takes {allowed}", {"Allow": allowed} if allowed else None)

    return app
