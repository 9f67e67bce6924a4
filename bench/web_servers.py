#!/usr/bin/env python3
"""Web servers against each other: Routinely's `app:create_app()` under (A) gunicorn with our
worker (app/gunicorn_conf.py's class), (B) gunicorn's gthread worker and (C) gunicorn's gevent
worker (same conf, keep-alive 75 s, gevent given `--worker-connections`), and (D) granian's
WSGI interface, the same number of processes each, the same throwaway redis-server, driven
by bench/ingest.py's wrk + deliveries.lua.

All servers are up at once (idle ones cost nothing measurable) so that runs interleave:
for each case (matched, unmatched) and concurrency, `--runs` rounds of A B C, each run after
a FLUSHALL and a fresh `routinely apply`. Each line: deliveries/s, p99, web CPU per delivery
(the server's process tree), Redis CPU per delivery, the 1-minute load average before the run,
and `other%`: CPU time of the machine (all cores, /proc/stat) not spent by this server, Redis
or wrk during the run, i.e. what other tenants took.

  python bench/web_servers.py [--seconds 8] [--runs 3] [--concurrency 16 64]
                              [--cases matched unmatched] [--servers ours gthread gevent granian]
                              [--gthread-threads 4] [--gevent-connections 100] [--granian-threads 1]
  (a server may be named with its thread or connection count, gthread:2, gevent:1000 or
  granian:4, to run several at once; `ours` is app/gunicorn_conf.py's configured worker class,
  whatever it is)

Only bench/ uses this. `granian_app` is the factory granian is given: create_app() and
then gc.freeze(), which is what app/gunicorn_conf.py's post_worker_init does for gunicorn.
"""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def granian_app():
    sys.path.insert(0, str(ROOT))
    from app import create_app

    app = create_app()
    gc.freeze()
    return app


def _main() -> None:
    import argparse
    import json
    import re
    import resource
    import shutil
    import statistics
    import subprocess
    import tempfile
    import time
    import urllib.error
    import urllib.request
    from contextlib import ExitStack, contextmanager

    sys.path.insert(0, str(ROOT))
    import redis

    from bench import ingest
    from tests.support import RedisServer, free_port

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--cases", nargs="+", default=["matched", "unmatched"], choices=["matched", "unmatched"])
    parser.add_argument("--servers", nargs="+", default=["ours", "gthread", "gevent", "granian"],
                        help="ours, gthread, gevent, granian; gthread:N / gevent:N / granian:N override the "
                             "thread or connection count (pilots)")
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 1) + 1, help="processes per server")
    parser.add_argument("--gthread-threads", type=int, default=4)
    parser.add_argument("--gevent-connections", type=int, default=100,
                        help="gevent --worker-connections (greenlets, so kept-alive connections, per process)")
    parser.add_argument("--granian-threads", type=int, default=1, help="granian --blocking-threads per worker")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is not installed: apt-get install -y wrk")

    tmp = Path(tempfile.mkdtemp(prefix="routinely-webbench-"))
    body = json.dumps(json.loads(ingest.PAYLOAD.read_bytes()), separators=(",", ":")).encode()
    (tmp / "body.json").write_bytes(body)
    routines = tmp / "routines.yml"
    texts = {"matched": ingest.ROUTINES,
             "unmatched": ingest.ROUTINES.replace("Codertocat/Hello-World", "elsewhere/other")}
    redis_server = RedisServer()
    env = {**os.environ, "REDIS_URL": redis_server.url, "GITHUB_WEBHOOK_SECRET": ingest.SECRET,
           "ROUTINELY_DATA_DIR": str(tmp), "PUBLIC_URL": "http://127.0.0.1", "PYTHONPATH": str(ROOT),
           "ROUTINELY_ADMIN_TOKEN": "bench-admin-token-0123456789abcdefghij", "WEB_CONCURRENCY": str(args.workers)}
    wrk_env = {**os.environ, "BODY_FILE": str(tmp / "body.json"), "SIGNATURE": ingest.sign(ingest.SECRET, body)}
    conn = redis.Redis.from_url(redis_server.url)
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py")]
    commands, labels = {}, {}
    for name in args.servers:
        kind, _, n = name.partition(":")
        if kind == "ours" and not n:
            conf = (ROOT / "app" / "gunicorn_conf.py").read_text()
            configured = re.search(r'^worker_class = "([^"]+)"', conf, re.M)
            commands[name], labels[name] = (gunicorn, env), f"gunicorn {configured[1].rsplit('.', 1)[-1] if configured else 'conf'} (ours)"
        elif kind == "gthread":
            n = n or str(args.gthread_threads)
            commands[name] = (gunicorn + ["-k", "gthread", "--threads", n], env)
            labels[name] = f"gunicorn gthread, {n} threads"
        elif kind == "gevent":
            n = n or str(args.gevent_connections)
            commands[name] = (gunicorn + ["-k", "gevent", "--worker-connections", n], env)
            labels[name] = f"gunicorn gevent, {n} connections"
        elif kind == "granian":
            n = n or str(args.granian_threads)
            (tmp / f"metrics-{name}").mkdir()
            commands[name] = ([str(Path(sys.executable).with_name("granian")), "--interface", "wsgi", "--http", "1",
                               "--workers", str(args.workers), "--blocking-threads", n, "--log-level", "warning",
                               "--factory"], {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{name}")})
            labels[name] = f"granian wsgi, {n} blocking thread(s)"
        else:
            sys.exit(f"bench: unknown server {name!r}")

    @contextmanager
    def serve(name: str):
        cmd, server_env = commands[name]
        port = free_port()
        if name.startswith("granian"):
            cmd = cmd + ["--host", "127.0.0.1", "--port", str(port), "bench.web_servers:granian_app"]
        else:
            cmd = cmd + ["--bind", f"127.0.0.1:{port}", "app:create_app()"]
        proc = subprocess.Popen(cmd, env=server_env, cwd=ROOT, stderr=open(tmp / f"{name}.log", "wb"))
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except (OSError, urllib.error.HTTPError):
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited: {(tmp / f'{name}.log').read_text()[-500:]}")
                    time.sleep(0.1)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def busy_cpu() -> float:
        """CPU seconds spent by all cores so far (everything but idle and iowait)."""
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    results: dict[tuple[str, str, int], list[float]] = {}
    print(f"{args.workers} processes per server, body {len(body)} bytes, {os.cpu_count()} cores, "
          f"{args.seconds} s a run; load before start: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    try:
        routines.write_text(texts[args.cases[0]])
        ingest.apply(env, routines)
        with ExitStack() as stack:
            up = {name: stack.enter_context(serve(name)) for name in args.servers}
            for url, _ in up.values():
                ingest.drive(url, 8, 2, wrk_env)  # warm-up
            version = 100
            for case in args.cases:
                routines.write_text(texts[case])
                for c in args.concurrency:
                    for rnd in range(1, args.runs + 1):
                        for name in args.servers:
                            url, pid = up[name]
                            conn.flushall()  # the version goes on rising: the workers see their cache as stale
                            conn.set("rly:routines:version", version)
                            version += 100
                            ingest.apply(env, routines)
                            load = Path("/proc/loadavg").read_text().split()[0]
                            web0, redis0, busy0, kids0 = ingest.tree_cpu(pid), ingest.redis_cpu(conn), busy_cpu(), children_cpu()
                            got = ingest.drive(url, c, args.seconds, wrk_env)
                            web = ingest.tree_cpu(pid) - web0
                            rcpu = ingest.redis_cpu(conn) - redis0
                            other = (busy_cpu() - busy0) - web - rcpu - (children_cpu() - kids0)
                            time.sleep(0.5)  # let in-flight deliveries land before counting
                            n = max(1, int(got["requests"]))
                            rps = float(got["rps"])
                            results.setdefault((name, case, c), []).append(rps)
                            print(f"{case:<9} c={c:<3} run {rnd} {labels[name]:<38} deliveries/s={rps:>6.0f} "
                                  f"p99_ms={got['p99_ms']:>6} web_us={web / n * 1e6:>4.0f} redis_us={rcpu / n * 1e6:>4.0f} "
                                  f"load1={load} other%={other / float(got['duration_s']) * 100:>3.0f} "
                                  f"non2xx={got['non2xx']} errors={got['errors']} requests={got['requests']} "
                                  f"events={conn.zcard('rly:events')} sessions={conn.zcard('rly:sessions')} "
                                  f"jobs={conn.llen('rq:queue:routinely')}", flush=True)
        print(f"load after: {Path('/proc/loadavg').read_text().split()[:3]}")
        print("\nmedians (deliveries/s):")
        for (name, case, c), rps in results.items():
            print(f"  {labels[name]:<38} {case:<9} c={c:<3} runs={' / '.join(f'{r:.0f}' for r in rps)} "
                  f"median={statistics.median(rps):.0f}")
        if "ours" in args.servers and len(args.servers) > 1:
            others = {"best maintained": [s for s in args.servers if s != "ours"],
                      "best gunicorn worker": [s for s in args.servers if s.split(":")[0] in ("gthread", "gevent")]}
            for case in args.cases:
                for c in args.concurrency:
                    ours = statistics.median(results[("ours", case, c)])
                    for what, names in others.items():
                        if names:
                            best = max(names, key=lambda s: statistics.median(results[(s, case, c)]))
                            print(f"  ours / {what} ({best}), {case}, c={c}: "
                                  f"{ours / statistics.median(results[(best, case, c)]):.2f}x")
    finally:
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    _main()
