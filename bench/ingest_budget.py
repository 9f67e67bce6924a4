#!/usr/bin/env python3
"""Instructions per delivery, by layer: what bench/ingest.py's microseconds are made of.

Wall-clock rates on a shared 2-core machine move ±20 % from one minute to the next;
instruction counts (valgrind's callgrind) do not, so this is how a change to the hot path
is judged before the wrk run that reports it. Three layers, each its own count:

- redis: a redis-server under callgrind applying N real starts (Starter.fire, the same
  plans the door builds), with one routine matching and with none; beside it Probot's
  durable work (MULTI, SET NX dedup key, LPUSH a small job, EXEC).
- web: the webhook door in process (app:create_app()'s WSGI app called directly, no HTTP),
  N signed deliveries, Python under callgrind (Redis outside it). HMAC-SHA256 and
  orjson.loads are counted separately: under valgrind they lose their SIMD/SHA paths and
  count several times what they cost on the CPU.

Redis's count includes its timers (serverCron runs 10 times a second, and under valgrind
the starts take minutes): more starts dilute them, so compare counts of the same --n.

  python bench/ingest_budget.py [--n 1000] [--n-web 300]    (needs valgrind: apt-get install -y valgrind)
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.support import RedisServer, free_port  # noqa: E402

PAYLOAD = ROOT.parent / "shared" / "fixtures" / "github-webhooks" / "pull_request.opened.json"
SECRET = "budget-secret"


def body() -> bytes:
    return json.dumps(json.loads(PAYLOAD.read_bytes()), separators=(",", ":")).encode()


def counted(pid: int, out: str, work) -> int:
    """Instructions process `pid` (under callgrind) executed while `work()` ran."""
    subprocess.run(["callgrind_control", "-z", str(pid)], stdout=subprocess.DEVNULL, check=True)
    work()
    subprocess.run(["callgrind_control", "-d", str(pid)], stdout=subprocess.DEVNULL, check=True)
    time.sleep(0.3)
    newest = max(glob.glob(out + ".*"), key=os.path.getmtime)
    return max(int(line.split()[1]) for line in open(newest) if line.startswith(("summary:", "totals:")))


def configure(url: str, tmp: Path, matched: bool) -> dict[str, str]:
    from bench.ingest import ROUTINES

    routines = tmp / "routines.yml"
    routines.write_text(ROUTINES if matched else ROUTINES.replace("Codertocat/Hello-World", "elsewhere/other"))
    env = {**os.environ, "REDIS_URL": url, "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_DATA_DIR": str(tmp),
           "PUBLIC_URL": "http://127.0.0.1", "ROUTINELY_ADMIN_TOKEN": "bench-budget-token-0123456789abcdefghij", "PROMETHEUS_MULTIPROC_DIR": str(tmp)}
    subprocess.run([sys.executable, "-m", "cli", "apply", str(routines)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    os.environ.update(env)
    return env


def door(n: int, offset: int = 0):
    """The app's WSGI callable and n signed deliveries for it (fresh delivery ids)."""
    from app import create_app
    from app.signature import sign

    raw = body()
    sig = sign(SECRET, raw)
    app = create_app().wsgi_app
    environs = [{"REQUEST_METHOD": "POST", "PATH_INFO": "/webhooks/github", "CONTENT_LENGTH": str(len(raw)),
                 "CONTENT_TYPE": "application/json", "HTTP_X_HUB_SIGNATURE_256": sig, "HTTP_X_GITHUB_EVENT": "pull_request",
                 "HTTP_X_GITHUB_DELIVERY": f"budget-{offset + i}", "wsgi.input": io.BytesIO(raw)} for i in range(n)]
    return app, environs


def redis_layer(n: int) -> None:
    from routinely.storage.wire import Wire, pack

    tmp = Path(tempfile.mkdtemp(prefix="routinely-budget-"))
    out = str(tmp / "cg.out")
    port = free_port()
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "redis-server", "--port",
                             str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        conn = redis.Redis.from_url(url)
        for _ in range(600):
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        wire = Wire(url)
        multi, exec_ = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
        probot = [multi + pack("SET", f"d:{i}", 1, "EX", 604800, "NX")
                  + pack("LPUSH", "q", '{"repo":"Codertocat/Hello-World","action":"opened","id":"%d"}' % i) + exec_
                  for i in range(n)]
        total = counted(proc.pid, out, lambda: [wire._exchange(wire._held(), c, 4) for c in probot])
        print(f"redis  probot-equivalent MULTI (SET NX + LPUSH)   {total / n / 1000:7.1f} k instructions")
        for matched in (True, False):
            configure(url, tmp, matched)
            app, warm = door(50, offset=10_000_000 * matched)
            for e in warm:
                app(e, lambda *a: None)
            app, environs = door(n, offset=20_000_000 * matched)
            # only Redis is under callgrind here: the door runs at full speed
            total = counted(proc.pid, out, lambda: [app(e, lambda *a: None) for e in environs])
            print(f"redis  routinely start, {'one routine matching' if matched else 'no routine matching':<22} "
                  f"{total / n / 1000:7.1f} k instructions")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def web_layer(n: int) -> None:
    """Re-run this script under callgrind for the door's Python (Redis outside it)."""
    tmp = Path(tempfile.mkdtemp(prefix="routinely-budget-"))
    try:
        for part in ("matched", "unmatched", "hmac", "json"):
            out = str(tmp / f"{part}.out")
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                            "--inner", part, "--out", out, "--n", str(n)], check=True, stdout=sys.stdout, stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def inner(part: str, n: int, out: str) -> None:
    import gc
    import hashlib
    import hmac

    import orjson

    me = os.getpid()
    if part in ("hmac", "json"):
        raw = body()
        work = (lambda: hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()) if part == "hmac" else \
            (lambda: orjson.loads(raw))
        total = counted(me, out, lambda: [work() for _ in range(n)])
        print(f"web    of which {'HMAC-SHA256 (21 KB)' if part == 'hmac' else 'orjson.loads (21 KB)':<31} "
              f"{total / n / 1000:7.1f} k instructions (inflated under valgrind)")
        return
    server = RedisServer()
    try:
        configure(server.url, Path(tempfile.mkdtemp(prefix="routinely-budget-")), part == "matched")
        app, warm = door(50)
        for e in warm:
            app(e, lambda *a: None)
        gc.freeze()  # as app/gunicorn_conf.py does after a worker boots
        _, environs = door(n, offset=1000)
        total = counted(me, out, lambda: [app(e, lambda *a: None) for e in environs])
        print(f"web    door in process, {'one routine matching' if part == 'matched' else 'no routine matching':<24} "
              f"{total / n / 1000:7.1f} k instructions")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000, help="starts Redis applies under callgrind")
    parser.add_argument("--n-web", type=int, default=300, help="deliveries the door handles under callgrind")
    parser.add_argument("--inner", choices=("matched", "unmatched", "hmac", "json"))  # the callgrind'ed half
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.n, args.out)
        return
    if not shutil.which("valgrind"):
        sys.exit("bench: valgrind is not installed: apt-get install -y valgrind")
    sys.stdout.flush()
    redis_layer(args.n)
    sys.stdout.flush()
    web_layer(args.n_web)


if __name__ == "__main__":
    main()
