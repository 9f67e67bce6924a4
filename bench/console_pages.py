#!/usr/bin/env python3
"""What the console's pages and /metrics cost to render with a busy store: N routines,
M sessions (the 30 days the store keeps) and their events, through the Flask app.

  python bench/console_pages.py [--routines 100] [--sessions 5000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from routinely.routines import catalog  # noqa: E402
from routinely.config import Settings  # noqa: E402
from routinely.firing.start import Firing, Starter  # noqa: E402
from tests.support import RedisServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routines", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    server = RedisServer()
    try:
        settings = Settings(redis_url=server.url, data_dir=Path(tempfile.mkdtemp()), admin_token="t")
        app = create_app(settings)
        conn = app.extensions["routinely"].conn
        routines = [{"name": f"r{i}", "account": f"acct{i % 5}", "prompt": "p", "repositories": [f"o/r{i}"],
                     "rate_limit": {"events": 10**6, "per_seconds": 3600},
                     "triggers": [{"api": {}}, {"github": {"events": ["pull_request.opened"], "filters": [
                         {"field": "title", "op": "matches_regex", "value": ".*hotfix.*"}]}},
                                  {"schedule": {"preset": "daily", "time": "09:00"}}]} for i in range(args.routines)]
        accounts = [{"name": f"acct{i}", "plan": "enterprise", "extra_usage": True, "rate_limit": {"events": 10**6, "per_seconds": 3600}}
                    for i in range(5)]
        catalog.apply(conn, {"accounts": accounts, "routines": routines}, time.time())
        starter = Starter(conn, settings)
        cat = catalog.load(conn)
        keys = list(cat.routines)
        t = time.perf_counter()
        for i in range(args.sessions):
            key = keys[i % len(keys)]
            starter.fire(Firing(kind="manual", routine=key), lambda c, key=key: [c.routines[key]])
        print(f"made {args.sessions} sessions over {args.routines} routines in {time.perf_counter() - t:.1f} s")
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = "Bearer t"
        for path in ("/", "/routines/acct0/r0", "/sessions", "/sessions?status=queued&kind=manual", "/events", "/usage",
                     "/metrics", "/api/routines", "/api/usage"):
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                resp = client.get(path)
                times.append(time.perf_counter() - t)
                assert resp.status_code == 200, (path, resp.status_code)
            print(f"  GET {path:<40} {statistics.median(times) * 1000:7.1f} ms  ({len(resp.data) // 1024} KB)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
