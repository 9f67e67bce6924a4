#!/usr/bin/env python3
"""Session start benchmark: a warm `routinely worker` against a fresh redis-server.

Prints (1) the time from a session being queued to its agent process running, on a warm
worker, for a small repository, and (2) the workspace-ready time (relay mirror + checkout)
for a repository of 10,000 files.

  python bench/session_start.py [--runs 10] [--files 10000]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from routinely import catalog, session_log, sessions  # noqa: E402
from routinely.cli import fire_one  # noqa: E402
from routinely.config import Settings  # noqa: E402
from routinely.start import Firing  # noqa: E402
from tests.support import RedisServer, Remotes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="routinely-bench-"))
    tmp.chmod(0o711)  # session users (the default as root) must reach their workspaces
    (tmp / "github").mkdir()
    (tmp / "out").mkdir()
    (tmp / "out").chmod(0o777)
    remotes = Remotes(tmp / "github")
    remotes.create("bench/small")
    t = time.perf_counter()
    remotes.create("bench/large", count=args.files)
    print(f"made a {args.files}-file repository in {time.perf_counter() - t:.1f} s")
    server = RedisServer()
    out = tmp / "out" / "started"
    env = {**os.environ, "REDIS_URL": server.url, "GITHUB_GIT_URL": remotes.url, "ROUTINELY_DATA_DIR": str(tmp / "data"),
           "ROUTINELY_AGENT": 'echo "STARTED $(date +%s.%N)"'}  # in the log: the sandbox sees no host folder
    settings = Settings.from_env(env)
    print(f"session users: {'on' if settings.session_users else 'off'}")
    conn = redis.Redis.from_url(server.url)
    routine = lambda name, repo: {"name": name, "account": "b", "prompt": "p", "repositories": [repo],  # noqa: E731
                                  "triggers": [{"api": {}}], "rate_limit": {"events": 10_000, "per_seconds": 3600},
                                  "environment": {"env": {"OUT": str(out)}}}
    catalog.apply(conn, {"accounts": [{"name": "b", "plan": "enterprise", "extra_usage": True}],
                         "routines": [routine("small", "bench/small"), routine("large", "bench/large")]}, time.time())
    worker = subprocess.Popen([sys.executable, "-m", "routinely.cli", "worker"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def one(name: str) -> tuple[float, float]:
            out.unlink(missing_ok=True)
            queued = time.time()
            s = fire_one(settings, conn, name, Firing(kind="manual"))
            while sessions.get(conn, settings, s["id"])["status"] in ("queued", "running"):
                time.sleep(0.005)
            started = next(float(line.split()[1]) for line in session_log.read(conn, s["id"])[0]
                           if line.startswith("STARTED "))
            ready = next(float(m.group(1)) for line in session_log.read(conn, s["id"])[0]
                         if (m := re.search(r"workspace ready in ([\d.]+) s", line)))
            return started - queued, ready

        one("small")  # warm the worker
        small = [one("small") for _ in range(args.runs)]
        lat = [s[0] * 1000 for s in small]
        print(f"queued -> agent started (warm worker, 1-file repo), {args.runs} runs: "
              f"median {statistics.median(lat):.0f} ms, min {min(lat):.0f} ms, max {max(lat):.0f} ms")
        print(f"  of which workspace ready: median {statistics.median(s[1] for s in small) * 1000:.0f} ms")
        large = [one("large") for _ in range(3)]
        print(f"{args.files}-file repository: workspace ready median {statistics.median(l[1] for l in large):.2f} s, "
              f"queued -> agent started median {statistics.median(l[0] for l in large):.2f} s (3 runs)")
    finally:
        worker.terminate()
        worker.wait(10)
        server.stop()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    main()
