"""gunicorn settings for `web` (Procfile and `routinely up`).

Checks configuration once before any worker boots, and refuses a non-loopback bind while
ROUTINELY_ADMIN_TOKEN is unset (the JSON API and pages would be open to the network).
"""
import ipaddress
import os
import sys

workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = os.environ.get("ROUTINELY_WEB_WORKER_CLASS", "sync")
threads = int(os.environ.get("ROUTINELY_WEB_THREADS", "1"))
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = os.environ.get("ROUTINELY_LOG_LEVEL", "warning")


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
        print(f"routinely: {exc}", file=sys.stderr)
        sys.exit(2)
    if settings.admin_token:
        return
    for address in server.cfg.address:
        if isinstance(address, tuple) and not _loopback(str(address[0])):
            print(
                f"routinely: refusing to listen on {address[0]} without ROUTINELY_ADMIN_TOKEN: "
                "set it, or bind to 127.0.0.1",
                file=sys.stderr,
            )
            sys.exit(2)
