#!/usr/bin/env python3
"""Fuzz the running service: the hostile corpus, then schemathesis against openapi.yaml.

Starts a throwaway redis-server and the Procfile's gunicorn (with an admin token, a
webhook secret and an access log), aims tests/hostile.py's corpus at it (framing cases on
a raw socket) checking each case's status, that a refusal stored nothing but the
contract's counters, and how many bytes it added to the web log; then runs schemathesis
(`not_a_server_error` and the response-schema checks) for a bounded number of examples
per operation, with the admin token on /api/* and a live trigger token on the fire
endpoint. Prints counts by status (from the access log), every 5xx, stored-on-refusal,
and log bytes per refusal (max and median). Not part of the test run.

  python bench/fuzz.py [--examples 50] [--workers 2]
"""
from __future__ import annotations

import argparse
import collections
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from routinely.config import Settings  # noqa: E402
from tests import hostile  # noqa: E402
from tests.support import RedisServer, free_port, redis_snapshot  # noqa: E402


def counters_aside(snapshot: dict) -> dict:
    return {k: v for k, v in snapshot.items() if not k.startswith(b"rly:count:")}


def send(port: int, case: hostile.Case) -> int:
    if case.raw is not None:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        try:
            s.sendall(case.raw)
            s.shutdown(socket.SHUT_WR)  # a client that stops mid-body
        except OSError:
            pass
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        s.close()
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(case.method, case.path, body=case.body or None, headers=case.headers)
        return c.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return 0
    finally:
        c.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=50, help="schemathesis examples per operation")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="routinely-fuzz-"))
    server = RedisServer()
    web = None
    try:
        conn = redis.Redis.from_url(server.url)
        settings = Settings(redis_url=server.url, data_dir=tmp, webhook_secret=hostile.SECRET, admin_token=hostile.ADMIN)
        ctx = hostile.prepare(conn, settings)
        port = free_port()
        errlog, access = tmp / "web.log", tmp / "access.log"
        env = {**os.environ, "REDIS_URL": server.url, "GITHUB_WEBHOOK_SECRET": hostile.SECRET,
               "ROUTINELY_ADMIN_TOKEN": hostile.ADMIN, "ROUTINELY_DATA_DIR": str(tmp), "PYTHONPATH": str(ROOT),
               "WEB_CONCURRENCY": "2"}
        web = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"),
                                "--bind", f"127.0.0.1:{port}", "--access-logfile", str(access),
                                "--access-logformat", '%(s)s "%(r)s"', "app:create_app()"],
                               env=env, cwd=ROOT, stderr=errlog.open("wb"))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

        cases = hostile.corpus(ctx)
        wrong, stored, log_bytes = [], [], []
        for case in cases:
            before = counters_aside(redis_snapshot(conn)) if case.refusal else None
            size = errlog.stat().st_size
            status = send(port, case)
            time.sleep(0.005)  # the worker writes its log line before it answers; leave it a moment anyway
            grew = errlog.stat().st_size - size
            if status not in case.expect:
                wrong.append(f"{case.name}: {status} not in {sorted(case.expect)}")
            if case.refusal:
                log_bytes.append((grew, case.name))
                if counters_aside(redis_snapshot(conn)) != before:
                    stored.append(case.name)
        print(f"hostile corpus: {len(cases)} cases, {sum(c.refusal for c in cases)} refusals")
        for line in wrong:
            print(f"  unexpected status: {line}")

        st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
        if st is None:
            print("schemathesis: not installed (pip install schemathesis); skipped")
        else:
            config = tmp / "schemathesis.toml"
            config.write_text(f'''
[[operations]]
include-path-regex = "^/api/"
headers = {{ Authorization = "Bearer {hostile.ADMIN}" }}

[[operations]]
include-path-regex = "/fire$"
headers = {{ Authorization = "Bearer {ctx.token}" }}
parameters = {{ "path.trigger_id" = "{ctx.trigger}" }}
''')
            done = subprocess.run([st, "--no-color", "--config-file", str(config), "run", str(ROOT / "openapi.yaml"), "--url",
                                   f"http://127.0.0.1:{port}", "--max-examples", str(args.examples), "--workers",
                                   str(args.workers), "--checks", "not_a_server_error,status_code_conformance",
                                   "--exclude-path", "/openapi.yaml", "--suppress-health-check", "all",
                                   "--request-timeout", "30", "--phases", "examples,fuzzing,stateful"],
                                  capture_output=True, text=True, cwd=tmp)
            (tmp / "schemathesis.out").write_text(done.stdout)
            lines = [l for l in done.stdout.splitlines() if l.strip()]
            print(f"schemathesis (exit {done.returncode}, phases: examples, fuzzing, stateful):")
            for line in lines[-14:]:
                print(f"  {line}")
        time.sleep(0.5)
        statuses: collections.Counter[str] = collections.Counter()
        fives = []
        for line in access.read_text(errors="replace").splitlines():
            m = re.match(r"(\d{3}) ", line)
            if m:
                statuses[m.group(1)] += 1
                if m.group(1).startswith("5"):
                    fives.append(line[:200])
        print("responses by status:", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
        print(f"5xx: {len(fives)}")
        for line in fives[:20]:
            print(f"  {line}")
        print(f"refusals that stored anything beyond counters: {len(stored)}")
        for name in stored:
            print(f"  {name}")
        if log_bytes:
            sizes = [b for b, _ in log_bytes]
            print(f"log bytes per refusal: max {max(sizes)}, median {statistics.median(sizes):.0f}")
            for size, name in sorted(log_bytes, reverse=True)[:3]:
                if size:
                    print(f"  {size} bytes: {name}")
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
