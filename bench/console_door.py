#!/usr/bin/env python3
"""What the console adds to a delivery's path, in process: the door's metrics (before/after
hooks, a multiprocess counter and histogram in mmap files) and the `fields` kept on the
event record for explanations. Interleaved rounds of the same deliveries through the Flask
app, with and without each addition, so machine noise hits both alike.

  python bench/console_door.py [--n 2000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="routinely-bench-metrics-"))

import orjson  # noqa: E402

from app import create_app  # noqa: E402
from app.signature import sign  # noqa: E402
from filters import Fields  # noqa: E402
from routinely.routines import catalog  # noqa: E402
from routinely.config import Settings  # noqa: E402
from routinely.routine_file import load_yaml  # noqa: E402
from tests.support import RedisServer  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from ingest import PAYLOAD, ROUTINES  # noqa: E402

SECRET = "bench-secret"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = RedisServer()
    try:
        settings = Settings(redis_url=server.url, data_dir=Path(tempfile.mkdtemp()), webhook_secret=SECRET, admin_token="t")
        app = create_app(settings)
        conn = app.extensions["routinely"].conn
        catalog.apply(conn, load_yaml(ROUTINES), time.time())
        body = orjson.dumps(orjson.loads(PAYLOAD.read_bytes()))
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-Hub-Signature-256": sign(SECRET, body)}
        client = app.test_client()
        hooks = (list(app.before_request_funcs.get(None, [])), list(app.after_request_funcs.get(None, [])))
        counter = [0]

        def run(with_metrics: bool) -> float:
            app.before_request_funcs[None] = hooks[0] if with_metrics else []
            app.after_request_funcs[None] = hooks[1] if with_metrics else []
            t = time.perf_counter()
            for _ in range(args.n):
                counter[0] += 1
                client.post("/webhooks/github", data=body, headers={**headers, "X-GitHub-Delivery": f"d{counter[0]}"})
            return (time.perf_counter() - t) / args.n * 1e6

        run(True)  # warm up: catalog, script, regex
        on, off = [], []
        for _ in range(args.rounds):
            on.append(run(True))
            off.append(run(False))
            conn.flushdb()
            catalog.apply(conn, load_yaml(ROUTINES), time.time())
        print(f"delivery through Flask (test client), median of {args.rounds} rounds of {args.n}:")
        print(f"  with door metrics    {statistics.median(on):7.1f} µs")
        print(f"  without door metrics {statistics.median(off):7.1f} µs   (metrics add {statistics.median(on) - statistics.median(off):+.1f} µs)")

        from app.metrics import DELIVERIES, INGEST

        m = 20000
        t = time.perf_counter()
        for _ in range(m):
            DELIVERIES.labels("pull_request", "accepted").inc()
            INGEST.observe(0.001)
        print(f"  the door's count alone (multiprocess counter + histogram): {(time.perf_counter() - t) / m * 1e6:.1f} µs")

        payload = orjson.loads(body)
        cat = catalog.load(conn)
        m = 20000
        t = time.perf_counter()
        for _ in range(m):
            fields = Fields("pull_request", payload)
            cat.route("pull_request", "opened", "Codertocat/Hello-World", payload, fields)
            orjson.dumps(dict(fields)).decode()
        kept = (time.perf_counter() - t) / m * 1e6
        t = time.perf_counter()
        for _ in range(m):
            cat.route("pull_request", "opened", "Codertocat/Hello-World", payload)
        bare = (time.perf_counter() - t) / m * 1e6
        print(f"routing {bare:.1f} µs; routing + keeping its fields for explanations {kept:.1f} µs "
              f"(+{kept - bare:.1f} µs; {len(orjson.dumps(dict(fields)))} bytes on the event record)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
