#!/usr/bin/env python3
"""What the admission step costs per firing.

Replays the start script for one matched routine N times against a fresh redis-server,
once as Routinely sends it and once with the admission data (rate windows, daily cap)
taken out, and prints Redis's own µs per call for each; then the Python-side cost of
working out the windows (admission.checks).

  python bench/admission.py [--n 5000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import redis  # noqa: E402

from routinely import admission, catalog  # noqa: E402
from routinely.config import Settings  # noqa: E402
from routinely.start import Firing, Starter  # noqa: E402
from tests.support import RedisServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    server = RedisServer()
    conn = redis.Redis.from_url(server.url)
    settings = Settings(redis_url=server.url, data_dir=Path("/tmp"))
    cat, _ = catalog.apply(conn, {"accounts": [{"name": "a", "plan": "enterprise", "extra_usage": True,
                                                "rate_limit": {"events": 10**6, "per_seconds": 3600}}],
                                  "routines": [{"name": "r", "account": "a", "prompt": "p", "triggers": [{"api": {}}],
                                                "rate_limit": {"events": 10**6, "per_seconds": 3600}}]}, time.time())
    starter = Starter(conn, settings)
    captured = []
    real = starter._script
    starter._script = lambda args: (captured.append(args), real(args=args))[1]
    starter.fire(Firing(kind="manual"), lambda c: [c.find("r")])
    control = orjson.loads(captured[0][0])

    def run(label: str, strip: bool) -> float:
        conn.config_resetstat()
        for i in range(args.n):
            c = dict(control)
            cand = dict(c["candidates"][0])
            cand["session"] = {**cand["session"], "key": f"rly:session:b{i}", "id": f"b{i}"}
            if strip:
                cand["limits"] = []
                cand.pop("cap")
            c["candidates"] = [cand]
            c["event"] = {**c["event"], "id": f"e{i}", "key": f"rly:event:e{i}"}
            real(args=[orjson.dumps(c), *captured[0][1:]])
        usec = conn.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        print(f"start script, {label}: {usec:.1f} µs per firing inside Redis")
        return usec

    full = run("with admission", False)
    bare = run("admission data removed", True)
    routine, account = cat.routines["a/r"], cat.accounts["a"]
    t = time.perf_counter()
    for _ in range(args.n):
        admission.checks(routine, account, time.time())
    py = (time.perf_counter() - t) / args.n * 1e6
    print(f"admission.checks (Python, windows and local day): {py:.1f} µs per routine")
    print(f"admission adds about {full - bare + py:.0f} µs per matched routine ({full - bare:.1f} in Redis + {py:.1f} in Python)")
    server.stop()


if __name__ == "__main__":
    main()
