"""The HTTP edge: `create_app()` builds the Flask app; configuration comes in only here."""
from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask

from app.responses import error, json_response
from routinely.catalog import CatalogCache
from routinely.config import Settings
from routinely.roles import Roles
from routinely.start import Starter
from routinely.store import connect

MAX_BODY = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB


@dataclass
class State:
    settings: Settings
    conn: redis.Redis
    starter: Starter
    roles: Roles  # who may fire (routinely.gate): asks GitHub only for triggers with roles


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Raises routinely.config.ConfigError for a wrong setting."""
    settings = settings or Settings.from_env()
    conn = connect(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["routinely"] = State(settings, conn, Starter(conn, settings, CatalogCache()), Roles(settings))

    from app import api, fire, pages, webhooks

    app.register_blueprint(webhooks.bp)
    app.register_blueprint(fire.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)

    @app.get("/healthz")
    def healthz():
        try:
            conn.ping()
        except redis.RedisError:
            return json_response({"status": "unavailable", "redis": "unreachable"}, 503)
        return json_response({"status": "ok"})

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError):
        # GitHub shows the delivery as failed; a redelivery later starts it normally
        app.logger.warning("redis unavailable: %s", type(exc).__name__)
        return error(503, "the store (Redis) is unavailable; retry shortly")

    @app.errorhandler(413)
    def too_large(exc):
        return error(413, f"the body is over {MAX_BODY // (1024 * 1024)} MB")

    @app.errorhandler(404)
    def not_found(exc):
        return error(404, "no such endpoint")

    @app.errorhandler(405)
    def not_allowed(exc):
        return error(405, "method not allowed on this endpoint")

    return app
