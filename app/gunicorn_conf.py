"""gunicorn settings for `web` (Procfile and `routinely up`).

Checks configuration once before any worker boots, and refuses to start without
ROUTINELY_ADMIN_TOKEN (the JSON API and pages have no open mode, loopback included).
Door metrics: each worker counts in its own file under PROMETHEUS_MULTIPROC_DIR (wiped at
start, a dead worker's gauges dropped), which GET /metrics sums.
"""
import os
import sys

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _stop(message: str) -> None:
    print(f"routinely: {message}", file=sys.stderr)
    sys.exit(2)


def _workers() -> int:
    # one event loop per core, plus one to keep a core busy while another waits on Redis
    raw = os.environ.get("WEB_CONCURRENCY", str((os.cpu_count() or 1) + 1))
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        _stop(f"WEB_CONCURRENCY must be a whole number of web workers, 1 or more (it is {raw!r})")
    return int(raw)


def _log_level() -> str:
    raw = os.environ.get("ROUTINELY_LOG_LEVEL", "warning").lower()
    if raw not in LOG_LEVELS:
        _stop(f"ROUTINELY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (it is {raw!r})")
    return raw


# gunicorn's gthread worker: per process, an event loop holding kept-alive connections and 2
# threads running the app (a request waiting on Redis lets the other run). Chosen by
# bench/web_servers.py (bench/RESULTS.md, "gunicorn workers"): our own worker was not 1.3x the
# best gunicorn worker; gevent carried about as much (more on a quiet machine, less on a
# saturated one) but its stop waits graceful_timeout for every idle kept-alive connection and
# its tail under overload passed 1 s, where gthread closes idle connections at once.
workers = _workers()
worker_class = "app.web_worker.Worker"  # gthread with a read deadline per connection
threads = 2  # 2, 4 and 8 measured within noise of each other, 2 slightly ahead
keepalive = 75  # seconds an idle connection stays open: past a proxy's own (nginx: 60 s upstream)
# per worker: connections held; only `threads` of them at a time read a body (the app refuses
# one over 25 MB: app.webhooks.MAX_BODY, Flask's MAX_CONTENT_LENGTH)
worker_connections = 100
control_socket_disable = True  # gunicorn 27's runtime control socket: one path per user, shared by every server
accesslog = None
errorlog = "-"
loglevel = _log_level()


def _metrics_dir() -> str:
    """This server's folder of per-worker metric files: DATA_DIR/metrics/MASTER_PID (two
    servers may share a data dir); folders of servers no longer running are removed."""
    import shutil

    from routinely.config import default_data_dir

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    else:
        data_dir = os.environ.get("ROUTINELY_DATA_DIR", "").strip() or default_data_dir()
        parent = os.path.join(os.path.expanduser(data_dir), "metrics")
        path = os.path.join(parent, str(os.getpid()))
        for name in os.listdir(parent) if os.path.isdir(parent) else ():
            if name.isdigit() and name != str(os.getpid()) and not _alive(int(name)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # before any worker imports prometheus_client
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


METRICS_DIR = _metrics_dir()


def on_starting(server):
    from routinely.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        _stop(str(exc))
    if not settings.admin_token:
        _stop("ROUTINELY_ADMIN_TOKEN is not set: set it (`routinely up` makes one in its data dir) — the API and pages have no open mode")
    for name in os.listdir(METRICS_DIR):  # counts of an earlier run are not this run's
        if name.endswith(".db"):
            os.remove(os.path.join(METRICS_DIR, name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # the app's objects (routines, filters, modules) live as long as the worker: taken out of
    # the collector's sweeps, which would otherwise walk them again and again on the hot path
    import gc

    gc.freeze()
