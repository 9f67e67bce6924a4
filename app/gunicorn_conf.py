"""gunicorn settings for `web` (Procfile and `routinely up`).

Checks configuration once before any worker boots, and refuses a non-loopback bind while
ROUTINELY_ADMIN_TOKEN is unset (the JSON API and pages would be open to the network).
"""
import ipaddress
import os
import sys

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _stop(message: str) -> None:
    print(f"routinely: {message}", file=sys.stderr)
    sys.exit(2)


def _workers() -> int:
    raw = os.environ.get("WEB_CONCURRENCY", "4")
    if not raw.isdigit() or int(raw) < 1:
        _stop(f"WEB_CONCURRENCY must be a whole number of web workers, 1 or more (it is {raw!r})")
    return int(raw)


def _log_level() -> str:
    raw = os.environ.get("ROUTINELY_LOG_LEVEL", "warning").lower()
    if raw not in LOG_LEVELS:
        _stop(f"ROUTINELY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (it is {raw!r})")
    return raw


# sync workers: measured against gthread and gevent (README, Speed), none was faster here
workers = _workers()
worker_class = "sync"
accesslog = None
errorlog = "-"
loglevel = _log_level()


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def on_starting(server):
    from routinely.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        _stop(str(exc))
    if settings.admin_token:
        return
    for address in server.cfg.address:
        if isinstance(address, tuple) and not _loopback(str(address[0])):
            _stop(f"refusing to listen on {address[0]} without ROUTINELY_ADMIN_TOKEN: set it, or bind to 127.0.0.1")
