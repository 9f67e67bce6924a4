#!/usr/bin/env python3
"""What the admission step costs per firing.

Applies the start plan of one matched routine N times against a throwaway redis-server
and prints Redis's own µs per start script call, the part of it spent on admission's
commands (one MGET of the three counters, three INCRs and their first EXPIREs, from INFO
commandstats; Lua's own cost per call is not in these), and
the Python cost of working out the windows (admission.checks); the rule itself runs in the script.
The redis-server is stopped and its directory removed however the run ends.

  python bench/admission.py [--n 5000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from routinely.firing import admission, start_plan  # noqa: E402
from routinely.routines import catalog
from routinely.config import Settings  # noqa: E402
from routinely.firing.start import Firing, Starter  # noqa: E402
from tests.support import RedisServer  # noqa: E402

CONFIG = {"accounts": [{"name": "a", "plan": "enterprise", "extra_usage": True,
                        "rate_limit": {"events": 10**6, "per_seconds": 3600}}],
          "routines": [{"name": "r", "account": "a", "prompt": "p", "triggers": [{"api": {}}],
                        "rate_limit": {"events": 10**6, "per_seconds": 3600}}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    server = RedisServer()
    try:
        run(server, args.n)
    finally:
        server.stop()


def run(server: RedisServer, n: int) -> None:
    conn = redis.Redis.from_url(server.url)
    cat, _ = catalog.apply(conn, CONFIG, time.time())
    with tempfile.TemporaryDirectory(prefix="routinely-bench-") as tmp:
        starter = Starter(conn, Settings(redis_url=server.url, data_dir=Path(tmp)))
        starter.fire(Firing(kind="manual"), lambda c: [c.find("r")])  # loads the script
        cat = starter.cache.get(conn)
        routine = cat.routines["a/r"]
        conn.config_resetstat()
        for _ in range(n):
            plan = start_plan.build(Firing(kind="manual"), cat, [routine], time.time())
            assert starter._apply(plan) is not None
        stats = conn.info("commandstats")
    script = stats["cmdstat_evalsha"]["usec_per_call"]
    spent = sum(stats[f"cmdstat_{c}"]["usec"] for c in ("mget", "incr", "expire") if f"cmdstat_{c}" in stats)
    expires_not_admission = 2 * n * stats.get("cmdstat_expire", {}).get("usec_per_call", 0)  # session + event TTLs
    in_redis = (spent - expires_not_admission) / n
    print(f"start script, one matched routine: {script:.1f} µs per firing inside Redis")
    print(f"of which admission's MGET/INCR/EXPIRE commands: {in_redis:.1f} µs")
    account = cat.accounts["a"]
    t = time.perf_counter()
    for _ in range(n):
        admission.checks(routine, account, time.time())
    py_checks = (time.perf_counter() - t) / n * 1e6
    print(f"admission.checks (Python, windows and local day): {py_checks:.1f} µs (the rule itself runs in the script)")
    print(f"admission adds about {in_redis + py_checks:.0f} µs per matched routine "
          f"({in_redis:.1f} in Redis + {py_checks:.1f} in Python)")


if __name__ == "__main__":
    main()
