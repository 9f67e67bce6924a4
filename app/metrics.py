"""GET /metrics: Prometheus text, behind the admin token.

Two sources, each cheap where it is paid:
- counted at the door, in process (prometheus-client): deliveries by event and outcome and
  ingest latency (a WSGI wrapper around the webhook door), API fires by status. Under gunicorn every worker writes its own mmap file
  in PROMETHEUS_MULTIPROC_DIR (app/gunicorn_conf.py sets and wipes it), and a scrape sums
  them — a few µs per request, no Redis round trip on the hot path.
- read from Redis at scrape time (what the door and the runner already write): drops by
  routine and reason, sessions per routine, sessions of the last 24 h by status and their
  durations, and the queue depth.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily

from app import webhooks
from app.auth import require_admin
from routinely.storage import keys
from routinely.records import model_usage, sessions
from routinely.github import recovery
from routinely import when
from routinely.records.routines_view import drops

bp = Blueprint("metrics", __name__)
bp.before_request(require_admin)

DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
_OUTCOMES = {202: "accepted", 401: "refused_signature", 400: "refused_bad_request", 405: "refused_method",
             413: "refused_too_large", 415: "refused_content_type", 500: "internal_error", 503: "unavailable"}

DELIVERIES = Counter("routinely_deliveries", "Webhook deliveries by event and outcome", ["event", "outcome"])
INGEST = Histogram("routinely_ingest_seconds", "Time from a delivery's arrival to its answer",
                   buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
FIRES = Counter("routinely_api_fires", "API trigger calls by HTTP status", ["status"])


def install(app: Flask) -> None:
    """Count at the doors: the webhook door (WSGI, in front of Flask) and the fire endpoint."""
    app.wsgi_app = DeliveryCounter(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_count_fire)
    app.register_blueprint(bp)


class DeliveryCounter:
    """WSGI middleware around the webhook door: each delivery's outcome and latency."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != webhooks.PATH:
            return self.app(environ, start_response)
        t0 = time.perf_counter()
        seen: list[int] = []

        def counting_start_response(status: str, headers: Any, *exc_info: Any) -> Any:
            seen.append(int(status[:3]))
            return start_response(status, headers, *exc_info)

        body = self.app(environ, counting_start_response)  # the door answers at once: one bytes chunk
        count_delivery(environ.get("HTTP_X_GITHUB_EVENT", ""), seen[0] if seen else 500, time.perf_counter() - t0)
        return body


def count_delivery(event: str, status: int, seconds: float) -> None:
    # the event label is GitHub's only on an answer given after the signature held (a
    # refusal may come before it, and then anybody picks the label)
    if status not in (200, 202, 500) or not event:
        event = "unverified"
    if status == 200:
        outcome = "ping" if event == "ping" else "duplicate"
    else:
        outcome = _OUTCOMES.get(status, f"http_{status}")
    DELIVERIES.labels(event[:64], outcome).inc()
    INGEST.observe(seconds)


def _count_fire(response: Response) -> Response:
    if request.endpoint == "fire.fire":
        FIRES.labels(str(response.status_code)).inc()
    return response


class StoreCollector:
    """Metrics read from Redis at scrape time."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterable[Any]:
        conn, queue_name = self.state.conn, self.state.settings.queue_name
        cat = self.state.catalog()
        routines = list(cat.routines.values())
        pipe = conn.pipeline(transaction=False)
        for routine in routines:
            pipe.hgetall(keys.drops(routine.key))
            pipe.zcard(keys.sessions_of(routine.key))  # its own account's sessions only
        replies = pipe.execute()
        dropped = CounterMetricFamily("routinely_drops", "Firings dropped by admission, by routine and reason",
                                      labels=["routine", "reason"])
        made = GaugeMetricFamily("routinely_routine_sessions", "Sessions kept (30 days) per routine", labels=["routine"])
        for i, routine in enumerate(routines):
            for reason, n in drops(replies[2 * i]).items():
                if isinstance(n, int):
                    dropped.add_metric([routine.key, reason], n)
            made.add_metric([routine.key], replies[2 * i + 1])
        yield dropped
        yield made
        by_status: dict[str, int] = {}
        durations: list[float] = []
        for status, started, finished in sessions.fields_since(conn, time.time() - keys.DAY, "status", "started_at", "finished_at"):
            if status:
                by_status[status.decode()] = by_status.get(status.decode(), 0) + 1
            if started and finished:
                durations.append(when.parse_iso(finished.decode()) - when.parse_iso(started.decode()))
        states = GaugeMetricFamily("routinely_sessions_24h", "Sessions created in the last 24 h by status", labels=["status"])
        for status, n in sorted(by_status.items()):
            states.add_metric([status], n)
        yield states
        recovered = CounterMetricFamily("routinely_recovery", "Missed-delivery recovery: passes made, redeliveries "
                                        "asked of GitHub, asks GitHub refused", labels=["what"])
        for what, n in recovery.counts(conn).items():
            recovered.add_metric([what], n)
        yield recovered
        buckets, acc = [], 0
        for bound in DURATION_BUCKETS:
            acc = sum(1 for d in durations if d <= bound)
            buckets.append((str(float(bound)), acc))
        buckets.append(("+Inf", len(durations)))
        yield GaugeHistogramMetricFamily("routinely_session_duration_seconds",
                                         "Run time of the sessions finished in the last 24 h",
                                         buckets=buckets, gsum_value=sum(durations))
        queue = GaugeMetricFamily("routinely_queue_depth", "Sessions waiting for a worker")
        queue.add_metric([], conn.llen(f"rq:queue:{queue_name}"))
        yield queue
        yield from model_usage_metrics(conn)


def model_usage_metrics(conn: Any) -> Iterable[Any]:
    """What the model gateway metered (routinely.records.model_usage): tokens and cost by routine and
    model, and the sessions the platform stopped (budget_exceeded, stalled)."""
    counted = model_usage.metrics(conn)
    families = (
        ("tokens", CounterMetricFamily("routinely_model_tokens", "Model tokens metered by the gateway, by routine, model and kind",
                                       labels=["routine", "model", "kind"])),
        ("cost_usd", CounterMetricFamily("routinely_model_cost_usd", "Model cost in USD metered by the gateway (priced models)",
                                         labels=["routine", "model"])),
        ("stops", CounterMetricFamily("routinely_session_stops", "Sessions stopped by the platform, by routine and reason "
                                      "(budget_exceeded, stalled)", labels=["routine", "reason"])),
    )
    for name, family in families:
        for labels, value in sorted(counted[name], key=lambda row: sorted(row[0].items())):
            family.add_metric(list(labels.values()), value)
        yield family


@bp.get("/metrics")
def metrics():
    state = current_app.extensions["routinely"]
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # every gunicorn worker's door counts
    else:
        for metric in (DELIVERIES, INGEST, FIRES):
            registry.register(metric)
    registry.register(StoreCollector(state))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
