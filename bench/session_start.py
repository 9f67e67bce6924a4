#!/usr/bin/env python3
"""Session start benchmark: a warm `routinely worker` against a fresh redis-server.

Queued → agent started, for a 1-file and a 10,000-file repository, with no setup and with a
setup that sleeps --setup-seconds (30): the first session on a new host (no mirror, no cached
setup), cold sessions (mirror there, setup cache cleared before each) and warm ones (mirror
and cached setup reused), plus `cache: false` (mirror only) for comparison with the old
clone-every-time path.

  python bench/session_start.py [--runs 5] [--files 10000] [--setup-seconds 30]
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

from routinely.routines import catalog  # noqa: E402
from routinely.records import session_log, sessions
from routinely.firing.start import fire_one  # noqa: E402
from routinely.config import Settings  # noqa: E402
from workers.warm.cache import SetupCache  # noqa: E402
from routinely.firing.start import Firing  # noqa: E402
from tests.support import RedisServer, Remotes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--setup-seconds", type=float, default=30)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="routinely-bench-"))
    tmp.chmod(0o711)  # session users (the default as root) must reach their workspaces
    (tmp / "github").mkdir()
    remotes = Remotes(tmp / "github")
    remotes.create("bench/small")
    t = time.perf_counter()
    remotes.create("bench/large", count=args.files)
    print(f"made a {args.files}-file repository in {time.perf_counter() - t:.1f} s")
    server = RedisServer()
    env = {**os.environ, "REDIS_URL": server.url, "GITHUB_GIT_URL": remotes.url, "ROUTINELY_DATA_DIR": str(tmp / "data"),
           "ROUTINELY_AGENT": 'echo "STARTED $(date +%s.%N)"'}  # in its log: the sandbox shows it nothing else
    settings = Settings.from_env(env)
    print(f"session users: {'on' if settings.session_users else 'off'}")
    conn = redis.Redis.from_url(server.url)
    slow_setup = f"sleep {args.setup_seconds:g}; echo built > built.txt"

    def routine(name: str, repo: str, setup: str | None, cache: bool = True) -> dict:
        return {"name": name, "account": "b", "prompt": "p", "repositories": [repo], "triggers": [{"api": {}}],
                "rate_limit": {"events": 10_000, "per_seconds": 3600},
                "environment": {"setup": setup, "cache": cache}}

    plan = [("small", "bench/small", None), ("small-setup", "bench/small", slow_setup),
            ("large", "bench/large", None), ("large-setup", "bench/large", slow_setup)]
    catalog.apply(conn, {"accounts": [{"name": "b", "plan": "enterprise", "extra_usage": True}],
                         "routines": [routine(*p) for p in plan]
                         + [routine("small-nocache", "bench/small", None, False),
                            routine("large-nocache", "bench/large", None, False),
                            routine("warmup", "bench/small", None, False)]}, time.time())
    worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = SetupCache(settings.data_dir)
    try:
        def one(name: str) -> tuple[float, float]:
            queued = time.time()
            s = fire_one(settings, conn, name, Firing(kind="manual"))
            while sessions.get(conn, settings, s["id"])["status"] in ("queued", "running"):
                time.sleep(0.005)
            log = session_log.read(conn, s["id"])[0]
            if sessions.get(conn, settings, s["id"])["status"] != "succeeded":
                raise SystemExit("a bench session failed:\n" + "\n".join(log))
            started = next(float(line.split()[1]) for line in log if line.startswith("STARTED "))
            ready = next(float(m.group(1)) for line in log if (m := re.search(r"workspace ready in ([\d.]+) s", line)))
            return started - queued, ready

        def report(label: str, samples: list[tuple[float, float]]) -> None:
            lat = [s[0] for s in samples]
            unit, k = ("ms", 1000) if max(lat) < 2 else ("s", 1)
            fmt = (lambda v: f"{v * k:.0f} {unit}") if unit == "ms" else (lambda v: f"{v:.2f} s")
            print(f"  {label:<44} median {fmt(statistics.median(lat))}, min {fmt(min(lat))}, max {fmt(max(lat))}"
                  f" ({len(lat)} run{'s' if len(lat) > 1 else ''}; workspace ready median "
                  f"{statistics.median(s[1] for s in samples) * 1000:.0f} ms)")

        one("warmup")  # the worker's imports, the small mirror
        print("queued -> agent started, warm worker:")
        for name, repo, setup in plan:
            files = "1-file" if repo == "bench/small" else f"{args.files}-file"
            what = f"{files} repo, " + (f"{args.setup_seconds:g}-s setup" if setup else "no setup")
            if name == "large":
                report(f"{what}: first (no mirror, no cache)", [one(name)])
            else:
                cache.clear(f"b/{name}")
                report(f"{what}: cold (setup cache empty)", [one(name)])
            if not setup:
                cold = []
                for _ in range(args.runs):
                    cache.clear(f"b/{name}")
                    cold.append(one(name))
                report(f"{what}: cold (setup cache empty)", cold)
            report(f"{what}: warm (mirror + cached setup)", [one(name) for _ in range(args.runs)])
        for name, what in (("small-nocache", "1-file repo"), ("large-nocache", f"{args.files}-file repo")):
            report(f"{what}, cache: false (mirror only)", [one(name) for _ in range(args.runs)])
    finally:
        worker.terminate()
        worker.wait(10)
        server.stop()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    main()
