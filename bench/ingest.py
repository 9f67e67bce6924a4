#!/usr/bin/env python3
"""Ingest benchmark: the Procfile's `web` against a fresh redis-server, driven by wrk.

Sends the real pull_request.opened payload (compacted, ~21 KB), correctly signed, with a
fresh X-GitHub-Delivery per request, at each concurrency; one routine matches it, so every
delivery makes a session and its RQ job durably before the 202. Prints one line per
concurrency and checks that Redis holds exactly one session per answered delivery.

  python bench/ingest.py [--seconds 8] [--concurrency 16 64] [--workers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app.signature import sign  # noqa: E402
from tests.support import RedisServer, free_port  # noqa: E402

SECRET = "bench-secret"
SHARED = ROOT.parent / "shared"
LUA = SHARED / "peers" / "deliveries.lua"
PAYLOAD = SHARED / "fixtures" / "github-webhooks" / "pull_request.opened.json"
ROUTINES = """
accounts: [{name: bench, plan: enterprise, extra_usage: true, rate_limit: {events: 1000000, per_seconds: 3600}}]
routines:
  - name: review
    account: bench
    prompt: Review this pull request.
    repositories: [Codertocat/Hello-World]
    rate_limit: {events: 1000000, per_seconds: 3600}
    triggers:
      - github:
          events: [pull_request.opened]
          filters:
            - {field: base_branch, op: equals, value: master}
            - {field: title, op: matches_regex, value: ".*README.*"}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "4")))
    parser.add_argument("--unmatched", action="store_true",
                        help="the routine watches another repository: only verify, dedup and record happen")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is not installed: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="routinely-bench-"))
    body = json.dumps(json.loads(PAYLOAD.read_bytes()), separators=(",", ":")).encode()
    (tmp / "body.json").write_bytes(body)
    (tmp / "routines.yml").write_text(ROUTINES.replace("Codertocat/Hello-World", "elsewhere/other") if args.unmatched else ROUTINES)
    server = RedisServer()
    env = {**os.environ, "REDIS_URL": server.url, "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_DATA_DIR": str(tmp),
           "WEB_CONCURRENCY": str(args.workers), "PUBLIC_URL": "http://127.0.0.1"}
    subprocess.run([sys.executable, "-m", "routinely.cli", "apply", str(tmp / "routines.yml")], env=env, check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"), "--bind", f"127.0.0.1:{port}", "app:create_app()"],
        env=env, cwd=ROOT,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        conn = redis.Redis.from_url(server.url)
        wrk_env = {**os.environ, "BODY_FILE": str(tmp / "body.json"), "SIGNATURE": sign(SECRET, body)}
        subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", str(LUA), f"http://127.0.0.1:{port}"], env=wrk_env,
                       stdout=subprocess.DEVNULL, check=True)  # warm-up (ids repeat later: they are answered as duplicates)
        print(f"routinely web: gunicorn {args.workers} workers, body {len(body)} bytes, "
              + ("no routine matching" if args.unmatched else "one matching routine"))
        for c in args.concurrency:
            conn.flushall()  # our own throwaway server
            subprocess.run([sys.executable, "-m", "routinely.cli", "apply", str(tmp / "routines.yml")], env=env,
                           check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            out = subprocess.run(["wrk", "-t1", f"-c{c}", f"-d{args.seconds}s", "-s", str(LUA), f"http://127.0.0.1:{port}"],
                                 env=wrk_env, capture_output=True, text=True, check=True).stdout
            line = next(l for l in out.splitlines() if l.startswith("RESULT"))
            got = dict(re.findall(r"(\w+)=([\d.]+)", line))
            sessions = conn.zcard("rly:sessions")
            recorded = conn.zcard("rly:events")
            queued = conn.llen("rq:queue:routinely")
            print(f"routinely c={c} deliveries/s={float(got['rps']):.0f} p50_ms={got['p50_ms']} p99_ms={got['p99_ms']} "
                  f"non2xx={got['non2xx']} errors={got['errors']} requests={got['requests']} events={recorded} sessions={sessions} jobs={queued}")
    finally:
        web.terminate()
        web.wait(10)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
