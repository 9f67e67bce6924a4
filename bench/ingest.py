#!/usr/bin/env python3
"""Ingest benchmark: the Procfile's `web` against a fresh redis-server, driven by wrk.

Sends the real pull_request.opened payload (compacted, ~21 KB), correctly signed, with a
fresh X-GitHub-Delivery per request, at each concurrency; one routine matches it, so every
delivery makes a session and its RQ job durably before the 202. Prints one line per
concurrency and what Redis holds afterwards (events, sessions, jobs).

With --compare it also runs the unmatched case (the routine watches another repository),
then, on the same machine and against the same throwaway Redis,
Probot doing the same durable work (../shared/peers/run-probot.sh) and three calibration
apps under the same gunicorn (bench/floor_apps.py): a bare WSGI callable, an empty Flask
route, Flask doing only HMAC + JSON decode + one MULTI, and a bare WSGI callable doing that
with the MULTI on a held socket. They say what the stack costs before Routinely does
anything. Each row also shows Redis CPU (INFO cpu) and web CPU (the gunicorn process tree,
from /proc) per delivery, in µs; Probot's Redis figure covers both its concurrencies.

  python bench/ingest.py [--seconds 8] [--concurrency 16 64] [--workers 4] [--unmatched] [--compare]
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
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app.signature import sign  # noqa: E402
from tests.support import RedisServer, free_port  # noqa: E402

SECRET = "bench-secret"
SHARED = ROOT.parent / "shared"
LUA = SHARED / "peers" / "deliveries.lua"
PROBOT = SHARED / "peers" / "run-probot.sh"
PAYLOAD = SHARED / "fixtures" / "github-webhooks" / "pull_request.opened.json"
FLOORS = {
    "bare WSGI app": "bench.floor_apps:raw",
    "empty Flask route": "bench.floor_apps:flask_empty",
    "Flask: HMAC + JSON + one MULTI": "bench.floor_apps:flask_minimal",
    "WSGI: HMAC + JSON + MULTI on a held socket": "bench.floor_apps:wsgi_minimal",
}
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


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            pass
    return total


def watch_node(runner: subprocess.Popen) -> float:
    """CPU seconds the Probot peer's node process used (warm-up included), sampled from
    /proc until run-probot.sh ends; its run is both concurrencies, so is the figure."""
    last: dict[int, float] = {}
    while runner.poll() is None:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if b"server.mjs" in (proc / "cmdline").read_bytes() and "probot" in os.readlink(proc / "cwd"):
                        last[int(proc.name)] = tree_cpu(int(proc.name))
                except OSError:
                    pass
        time.sleep(0.2)
    return sum(last.values())


def redis_cpu(conn: redis.Redis) -> float:
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextmanager
def serve(app: str, env: dict[str, str], workers: int | None, worker_class: str | None = None) -> Iterator[tuple[str, int]]:
    """Run `app` under the Procfile's gunicorn configuration (its worker class unless one is
    named); yield its base URL and pid."""
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"),
         *(["--workers", str(workers)] if workers else []), "--bind", f"127.0.0.1:{port}",
         *(["-k", worker_class] if worker_class else []), app],
        env=env, cwd=ROOT, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers (calibration apps have no /healthz)
            except OSError:
                time.sleep(0.1)
        yield url, web.pid
    finally:
        web.terminate()
        web.wait(10)


def drive(url: str, connections: int, seconds: int, wrk_env: dict[str, str]) -> dict[str, str]:
    """One wrk run with the peers' delivery script; its RESULT line as a dict."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(LUA), url],
                         env=wrk_env, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    return dict(re.findall(r"(\w+)=([\d.]+)", line))


def measured(url: str, pid: int | None, conn: redis.Redis, c: int, seconds: int, wrk_env: dict[str, str]) -> dict[str, str]:
    """drive(), plus Redis CPU and web CPU per delivery in µs (web: the gunicorn tree)."""
    web0, redis0 = tree_cpu(pid) if pid else 0.0, redis_cpu(conn)
    got = drive(url, c, seconds, wrk_env)
    n = max(1, int(got["requests"]))
    got["redis_us"] = f"{(redis_cpu(conn) - redis0) / n * 1e6:.0f}"
    got["web_us"] = f"{(tree_cpu(pid) - web0) / n * 1e6:.0f}" if pid else "-"
    return got


def line(name: str, c: int, got: dict[str, str], extra: str = "") -> str:
    return (f"{name:<42} c={c:<3} deliveries/s={float(got['rps']):>6.0f} p50_ms={got['p50_ms']:>6} "
            f"p99_ms={got['p99_ms']:>6} redis_us={got.get('redis_us', '-'):>4} web_us={got.get('web_us', '-'):>4} "
            f"non2xx={got['non2xx']} errors={got['errors']} {extra}").rstrip()


def apply(env: dict[str, str], routines: Path) -> None:
    subprocess.run([sys.executable, "-m", "cli", "apply", str(routines)], env=env, check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--workers", type=int, default=None,
                        help="web workers (default: app/gunicorn_conf.py's, cores + 1)")
    parser.add_argument("--worker-class", default=None,
                        help="another gunicorn worker class for Routinely's rows (e.g. sync, to compare)")
    parser.add_argument("--unmatched", action="store_true",
                        help="the routine watches another repository: only verify, dedup and record happen")
    parser.add_argument("--compare", action="store_true",
                        help="then run Probot (run-probot.sh) and the calibration apps the same way")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is not installed: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="routinely-bench-"))
    body = json.dumps(json.loads(PAYLOAD.read_bytes()), separators=(",", ":")).encode()
    (tmp / "body.json").write_bytes(body)
    routines = tmp / "routines.yml"
    unmatched = ROUTINES.replace("Codertocat/Hello-World", "elsewhere/other")
    configs = [] if args.unmatched else [("routinely, matched", ROUTINES)]
    if args.unmatched or args.compare:
        configs.append(("routinely, unmatched", unmatched))
    server = RedisServer()
    env = {**os.environ, "REDIS_URL": server.url, "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_DATA_DIR": str(tmp),
           "PUBLIC_URL": "http://127.0.0.1", "PYTHONPATH": str(ROOT), "ROUTINELY_ADMIN_TOKEN": "bench-admin-token-0123456789abcdefghij"}
    wrk_env = {**os.environ, "BODY_FILE": str(tmp / "body.json"), "SIGNATURE": sign(SECRET, body)}
    conn = redis.Redis.from_url(server.url)
    try:
        routines.write_text(configs[0][1])
        apply(env, routines)
        print(f"gunicorn {args.workers or (os.cpu_count() or 1) + 1} workers ({args.worker_class or 'app/gunicorn_conf.py worker class'}), "
              f"body {len(body)} bytes, {os.cpu_count()} cores; matched: one routine matches each delivery, "
              "unmatched: it watches another repository")
        runs = 100
        with serve("app:create_app()", env, args.workers, args.worker_class) as (url, pid):
            drive(url, 8, 2, wrk_env)  # warm-up (its ids repeat later: answered as duplicates)
            for name, text in configs:
                routines.write_text(text)
                for c in args.concurrency:
                    conn.flushall()  # our own throwaway server; the version goes on rising, so that the
                    conn.set("rly:routines:version", runs)  # workers' cached configuration is seen as stale
                    runs += 100
                    apply(env, routines)
                    got = measured(url, pid, conn, c, args.seconds, wrk_env)
                    time.sleep(0.5)  # let in-flight deliveries land before counting
                    print(line(name, c, got, f"requests={got['requests']} events={conn.zcard('rly:events')} "
                               f"sessions={conn.zcard('rly:sessions')} jobs={conn.llen('rq:queue:routinely')}"), flush=True)
        if not args.compare:
            return
        conn.flushall()
        redis0 = redis_cpu(conn)
        runner = subprocess.Popen(["bash", str(PROBOT)], env={**os.environ, "REDIS_URL": server.url,
                                  "SECS": str(args.seconds), "CONCURRENCY": " ".join(map(str, args.concurrency))},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        node_cpu = watch_node(runner)  # node's CPU, sampled until the script ends
        out, err = runner.communicate()
        probot = subprocess.CompletedProcess(runner.args, runner.returncode, out, err)
        rows = [row for row in probot.stdout.splitlines() if "RESULT" in row]
        results = [dict(re.findall(r"(\w+)=([\d.]+)", row)) for row in rows]
        total = sum(int(r.get("requests", 0)) for r in results) or 1
        per = f"{(redis_cpu(conn) - redis0) / total * 1e6:.0f}"  # both concurrencies together
        web = f"{node_cpu / total * 1e6:.0f}" if node_cpu else "-"
        for row, got in zip(rows, results):
            c = int(re.search(r"c=(\d+)", row).group(1))
            print(line("probot + ioredis MULTI", c, {**got, "redis_us": per, "web_us": web}), flush=True)
        if probot.returncode:
            print(f"probot: run-probot.sh failed ({probot.returncode}): {probot.stderr.strip()[-300:]}")
        for name, app in FLOORS.items():
            with serve(app, env, args.workers) as (url, pid):
                drive(url, 8, 1, wrk_env)
                for c in args.concurrency:
                    print(line(name, c, measured(url, pid, conn, c, args.seconds, wrk_env)), flush=True)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
