#!/usr/bin/env python3
"""Fault injection: signed deliveries into a real `routinely up`, a fault mid-run, then a count.

Each experiment starts a fresh stack (`routinely up` on a throwaway redis-server with an
append-only file, a local bare repository as GitHub, an agent that starts a grandchild),
sends N signed pull_request deliveries at concurrency C, injects its fault when 40 % are
sent, redelivers every delivery that did not get a 2xx (as GitHub's redeliver does), waits
for the sessions to drain, stops the stack, and reconciles:

  sent          deliveries sent (first attempts)
  acknowledged  deliveries answered 2xx in the end (202, or 200 duplicate on a redelivery)
  5xx           answers 5xx or a cut connection, over all attempts
  redelivered   deliveries sent again because their first attempt did not get a 2xx
  sessions      sessions made
  failed        sessions that ended failed (worker-kill: the ones its worker was running)
  duplicates    sessions beyond one per delivery
  lost          acknowledged deliveries without a session
  non-terminal  sessions still queued or running after the drain
  orphans       processes of the sessions left after the stack stopped
  workspaces    workspace and relay folders left on disk

Experiments: redis-restart (SIGTERM to Redis, started again 3 s later), worker-kill
(SIGKILL to a session worker while sessions run; `up` restarts it, the reaper fails its
sessions), web-kill (SIGKILL to a gunicorn worker; gunicorn starts another), and
service-down: the whole service stopped (`up` gets SIGTERM; Redis stays) while GitHub sends
N deliveries over --down-seconds (60), then started again. There GitHub is the fake of
tests/fake_github.py with a GitHub App configured: it keeps every attempt (a refused
connection fails it), lists them at GET /app/hook/deliveries, and a redelivery sends the same
delivery to the webhook again; nobody redelivers by hand — the scheduler's recovery pass at
start (ROUTINELY_RECOVER_MAX set to N, so one pass asks for all) must bring every one back.
Its `redelivered` counts the redeliveries recovery asked for, `5xx` the failed attempts, and
`lost` the deliveries sent without a session.

  python bench/faults.py [--deliveries 300] [--concurrency 16] [--workers 3] [--only redis-restart]
                         [--down-seconds 60]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app.signature import sign  # noqa: E402
from routinely.storage import keys  # noqa: E402
from tests.fake_github import FakeGitHub  # noqa: E402
from tests.support import RedisServer, Remotes, fixture, free_port  # noqa: E402

SECRET = "bench-secret"
AGENT = "sleep 30 & sleep 0.3; kill $!; echo done"  # a grandchild that outlives the agent unless killed
ROUTINES = """
accounts: [{name: bench, plan: enterprise, extra_usage: true, rate_limit: {events: 1000000, per_seconds: 3600}}]
routines:
  - name: review
    account: bench
    prompt: Review this pull request.
    repositories: [octo/api]
    rate_limit: {events: 1000000, per_seconds: 3600}
    triggers: [{github: {events: [pull_request.opened]}}]
"""
SESSION_UIDS = range(200_000, 300_000)
EXPERIMENTS = ("redis-restart", "worker-kill", "web-kill", "service-down")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Stack:
    def __init__(self, tmp: Path, workers: int, app_env: dict[str, str] | None = None) -> None:
        self.tmp, self.workers = tmp, workers
        self.redis = RedisServer(persistent=True)
        self.conn = redis.Redis.from_url(self.redis.url)
        remotes = Remotes(tmp / "github")
        (tmp / "github").mkdir()
        remotes.create("octo/api")
        self.data = tmp / "data"
        self.port = free_port()
        self.env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "LANG": "C.UTF-8", "REDIS_URL": self.redis.url,
                    "ROUTINELY_DATA_DIR": str(self.data), "GITHUB_WEBHOOK_SECRET": SECRET,
                    "GITHUB_GIT_URL": remotes.url, "ROUTINELY_AGENT": AGENT, "WEB_CONCURRENCY": "2", **(app_env or {})}
        (tmp / "routines.yml").write_text(ROUTINES)
        subprocess.run([sys.executable, "-m", "cli", "apply", str(tmp / "routines.yml")], env=self.env,
                       check=True, capture_output=True)
        self.log = (tmp / "up.log").open("a")
        self.start()

    def start(self) -> None:
        """`routinely up`, answering, every session worker listening (again, after stop())."""
        tmp, workers = self.tmp, self.workers
        if self.log.closed:
            self.log = (tmp / "up.log").open("a")
        self.up = subprocess.Popen([sys.executable, "-m", "cli", "up", "--port", str(self.port),
                                    "--workers", str(workers)], env=self.env, stdout=self.log, stderr=self.log, cwd=ROOT)
        end = time.time() + 60
        while time.time() < end:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/api/sessions")
                c.getresponse().read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("bench: routinely up did not answer; see " + str(tmp / "up.log"))
        while time.time() < end and len([w for w in self.conn.smembers("rq:workers") if self.conn.exists(w)]) < workers:
            time.sleep(0.2)  # every session worker is listening before the first delivery (a stopped one's entry may linger)

    def processes(self, needle: str) -> list[int]:
        found, todo = [], children(self.up.pid)
        while todo:
            pid = todo.pop()
            if needle in cmdline(pid):
                found.append(pid)
            todo += children(pid)
        return found

    def stop(self) -> None:
        self.up.send_signal(signal.SIGTERM)
        try:
            self.up.wait(60)
        except subprocess.TimeoutExpired:
            self.up.kill()
            self.up.wait()
        self.log.close()


class Sender:
    """C threads posting signed deliveries; every delivery's last answer is kept."""

    def __init__(self, port: int, total: int, concurrency: int) -> None:
        payload = fixture("pull_request.opened.json")
        payload["repository"]["full_name"] = "octo/api"
        self.body = json.dumps(payload, separators=(",", ":")).encode()
        self.signature = sign(SECRET, self.body)
        self.port, self.total, self.concurrency = port, total, concurrency
        self.ids = [str(uuid.uuid4()) for _ in range(total)]
        self.answer: dict[str, int] = {}
        self.fivexx = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._next = 0

    def post(self, conn: http.client.HTTPConnection | None, delivery: str) -> tuple[http.client.HTTPConnection | None, int]:
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery,
                   "X-Hub-Signature-256": self.signature, "User-Agent": "GitHub-Hookshot/bench"}
        try:
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.request("POST", "/webhooks/github", body=self.body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return conn, resp.status
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            return None, 599  # a cut connection counts as a 5xx: GitHub would show it failed

    def _run(self, ids: list[str]) -> None:
        conn = None
        while True:
            with self._lock:
                if self._next >= len(ids):
                    break
                delivery = ids[self._next]
                self._next += 1
            conn, status = self.post(conn, delivery)
            with self._lock:
                self.answer[delivery] = status
                self.sent += 1
                if status >= 500:
                    self.fivexx += 1

    def send(self, ids: list[str]) -> None:
        self._next = 0
        threads = [threading.Thread(target=self._run, args=(ids,)) for _ in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def leftovers(data: Path) -> tuple[int, int]:
    """(processes of the sessions, workspace and relay folders) left on this host."""
    marker = str(data).encode()
    procs = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != "Z" and marker in env and b"ROUTINELY_SESSION_ID=" in env:
            procs += 1
    folders = sum(len(list((data / sub).iterdir())) for sub in ("workspaces", "relays") if (data / sub).exists())
    return procs, folders


def experiment(name: str, args: argparse.Namespace) -> dict[str, int | str]:
    tmp = Path(tempfile.mkdtemp(prefix=f"routinely-faults-{name}-"))
    tmp.chmod(0o711)  # session users must be able to pass through to their workspaces
    stack = Stack(tmp, args.workers)
    sender = Sender(stack.port, args.deliveries, args.concurrency)

    def fault() -> None:
        while sender.sent < args.deliveries * 0.4 or not stack.conn.zcard(keys.RUNNING):
            time.sleep(0.01)  # mid-send, with sessions running
        if name == "redis-restart":
            stack.redis.halt()
            time.sleep(3)
            stack.redis.start()
        elif name == "worker-kill":
            pids = stack.processes("workers.worker")
            os.kill(pids[0], signal.SIGKILL)
        elif name == "web-kill":
            master = stack.processes("gunicorn")[0]
            os.kill(children(master)[0], signal.SIGKILL)

    injector = threading.Thread(target=fault)
    injector.start()
    sender.send(sender.ids)
    injector.join()
    failed = [d for d in sender.ids if not 200 <= sender.answer.get(d, 599) < 300]
    redelivered = len(failed)
    for _ in range(5):  # GitHub's redeliver: the same delivery id again
        if not failed:
            break
        time.sleep(2)
        sender.send(failed)
        failed = [d for d in failed if not 200 <= sender.answer[d] < 300]

    per_delivery, nonterminal, failed, sids = reconcile(stack, args.drain)
    stack.stop()
    time.sleep(1)
    orphans, folders = leftovers(stack.data)
    acknowledged = [d for d in sender.ids if 200 <= sender.answer.get(d, 599) < 300]
    stack.redis.stop()
    return {
        "experiment": name,
        "sent": len(sender.ids),
        "acknowledged": len(acknowledged),
        "5xx": sender.fivexx,
        "redelivered": redelivered,
        "sessions": len(sids),
        "failed": failed,
        "duplicates": sum(n - 1 for n in per_delivery.values() if n > 1),
        "lost": sum(1 for d in acknowledged if not per_delivery.get(d)),
        "non-terminal": nonterminal,
        "orphans": orphans,
        "workspaces": folders,
        "log": str(tmp / "up.log"),
    }


def reconcile(stack: Stack, drain: int) -> tuple[dict[str, int], int, int, list[str]]:
    """Wait for the sessions to drain; (sessions per delivery, non-terminal, failed, session ids)."""
    drain_end = time.time() + drain
    while time.time() < drain_end:
        if not stack.conn.zcard(keys.RUNNING) and not stack.conn.llen("rq:queue:routinely"):
            break
        time.sleep(1)
    time.sleep(2)
    per_delivery: dict[str, int] = {}
    nonterminal = failed = 0
    sids = [s.decode() for s in stack.conn.zrange(keys.SESSIONS, 0, -1)]
    pipe = stack.conn.pipeline(transaction=False)
    for sid in sids:
        pipe.hmget(keys.session(sid), "status", "trigger")
    for status, trigger in pipe.execute():
        delivery = json.loads(trigger or b"{}").get("delivery")
        per_delivery[delivery] = per_delivery.get(delivery, 0) + 1
        if status in (b"queued", b"running"):
            nonterminal += 1
        failed += status == b"failed"
    return per_delivery, nonterminal, failed, sids


def service_down(args: argparse.Namespace) -> dict[str, int | str]:
    """The service stopped while GitHub sends; started again, recovery alone brings the deliveries back."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    tmp = Path(tempfile.mkdtemp(prefix="routinely-faults-service-down-"))
    tmp.chmod(0o711)
    github = FakeGitHub()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    stack = Stack(tmp, args.workers, {"GITHUB_APP_ID": "4242", "GITHUB_PRIVATE_KEY": key, "GITHUB_API_URL": github.url,
                                      "ROUTINELY_RECOVER_MAX": str(args.deliveries)})
    stack.conn.hset(keys.INSTALLATIONS, "octo/api", 42)  # the App covers the repository (clones use its token)
    github.hook_url, github.hook_secret = f"http://127.0.0.1:{stack.port}/webhooks/github", SECRET
    payload = fixture("pull_request.opened.json")
    payload["repository"]["full_name"] = "octo/api"

    def passes() -> int:
        return int(stack.conn.hget(keys.RECOVERY, "passes") or 0)

    end = time.time() + 60
    while passes() < 1 and time.time() < end:
        time.sleep(0.2)  # the scheduler's pass at start: recovery's origin is set
    stack.stop()
    started, sent = time.time(), []
    for i in range(args.deliveries):  # spread over the whole outage, as GitHub would send them
        time.sleep(max(0.0, started + i * args.down_seconds / args.deliveries - time.time()))
        sent.append(github.send("pull_request", payload))
    time.sleep(max(0.0, started + args.down_seconds - time.time()))
    down_for = time.time() - started
    before = passes()
    stack.start()
    end = time.time() + 120
    while passes() <= before and time.time() < end:
        time.sleep(0.2)  # the pass at start (one pass: every redelivery is asked for and sent before it ends)
    per_delivery, nonterminal, failed, sids = reconcile(stack, args.drain)
    stack.stop()
    time.sleep(1)
    orphans, folders = leftovers(stack.data)
    guids = [a["guid"] for a in sent]
    ok = {a["guid"] for a in github.attempts if 200 <= a["status_code"] < 300}
    stack.redis.stop()
    github.close()
    return {
        "experiment": f"service-down {down_for:.0f}s",
        "sent": len(guids),
        "acknowledged": sum(1 for g in guids if g in ok),
        "5xx": sum(1 for a in github.attempts if not 200 <= a["status_code"] < 300),
        "redelivered": len(github.redeliveries()),
        "sessions": len(sids),
        "failed": failed,
        "duplicates": sum(n - 1 for n in per_delivery.values() if n > 1),
        "lost": sum(1 for g in guids if not per_delivery.get(g)),
        "non-terminal": nonterminal,
        "orphans": orphans,
        "workspaces": folders,
        "log": str(tmp / "up.log"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--drain", type=int, default=300, help="seconds to wait for the sessions to finish")
    parser.add_argument("--only", choices=EXPERIMENTS)
    parser.add_argument("--down-seconds", type=float, default=60.0,
                        help="service-down: how long the service is stopped (the reported row uses 60)")
    args = parser.parse_args()
    names = [args.only] if args.only else list(EXPERIMENTS)
    columns = ["experiment", "sent", "acknowledged", "5xx", "redelivered", "sessions", "failed", "duplicates", "lost",
               "non-terminal", "orphans", "workspaces"]
    print(f"{args.deliveries} deliveries at concurrency {args.concurrency}, {args.workers} session workers, "
          f"{os.cpu_count()} cores", flush=True)
    print("  ".join(f"{c:>12}" for c in columns), flush=True)
    for name in names:
        row = service_down(args) if name == "service-down" else experiment(name, args)
        print("  ".join(f"{row[c]!s:>12}" for c in columns), flush=True)
        print(f"  (stack log: {row['log']})", flush=True)


if __name__ == "__main__":
    main()
