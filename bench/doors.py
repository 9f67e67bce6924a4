#!/usr/bin/env python3
"""Issue 27, "every door is as confined as the room": what a hostile session can make the worker
and the host hold, attack by attack, against a real stack.

The stack: a throwaway redis-server, a bare repository standing in for GitHub (octo/api), a
fake model vendor on loopback, and a fresh long-lived worker per attack (session users on,
the real sandbox). Each attack is one session of the probe agent tests/agents/door_attacker.py,
run after one honest warm-up session in the same worker (so the baseline has every door's
code loaded). While the attack session runs, the bench samples the worker's /proc/<pid>/status
(`Threads:`, `VmRSS:`) and Redis `INFO memory` (`used_memory`) every 50 ms; "after" is read
once the worker's thread count has settled after the session ended.

Columns: the worker's threads, RSS and open files (each connection a door holds is one), and
Redis used_memory: growth over the baseline at the peak / after; disk: what the session wrote
against its limit (the agent's count; `host` is the worker's own, `resources.disk_mb`); the
session's status and reason; what the session saw. The first row, `honest`, is the control:
what any session costs. Each session is bounded by --timeout (its timeout_minutes); the
bench stops every process and removes every folder it made.

  .venv/bin/python bench/doors.py [--only connections-egress,disk-tmp] [--timeout 120]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from routinely.routines import catalog  # noqa: E402
from routinely.records import session_log, sessions
from routinely.config import Settings  # noqa: E402
from routinely.records.sessions import FINAL  # noqa: E402
from routinely.firing.start import Firing, fire_one  # noqa: E402
from routinely.when import iso  # noqa: E402
from tests.fake_models import FakeMessages  # noqa: E402
from tests.support import RedisServer, Remotes, reachable_folder  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
MB = 1024 * 1024
SAMPLE_SECONDS = 0.05
DISK_MB = 100
INODES = 100_000


# -- host-side figures

@dataclass
class Sample:
    threads: int = 0
    rss_kb: int = 0
    hwm_kb: int = 0
    redis: int = 0
    fds: int = 0  # the worker's open files: every connection a door holds is one


def worker_status(pid: int) -> dict[str, int]:
    """Threads, VmRSS and VmHWM (kB) of the worker, from /proc/<pid>/status; {} once it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Threads", "VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Outcome:
    """One attack session: the worker's and Redis's growth, the session's record and log."""

    name: str
    base: Sample
    peak: Sample
    after: Sample
    status: str
    reason: str
    resources: dict[str, Any]
    log: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.log if line.startswith(prefix)]


# -- the stack

class Stack:
    """Redis, the fake GitHub and model vendor, a folder session users can reach with the agent
    in it; `session()` runs one attack in a fresh worker and measures it."""

    def __init__(self, exits: contextlib.ExitStack, timeout: float) -> None:
        self.timeout = timeout
        self.base = exits.enter_context(reachable_folder("rly-bench-doors-", agents=("door_attacker.py",)))
        self.redis = RedisServer()
        exits.callback(self.redis.stop)
        self.fake = FakeMessages()
        exits.callback(self.fake.close)
        (self.base / "github").mkdir()
        self.remotes = Remotes(self.base / "github")
        self.remotes.create("octo/api")
        self.data = self.base / "data"
        self.env = {
            "PATH": os.environ["PATH"], "HOME": str(self.base), "LANG": "C.UTF-8",
            "REDIS_URL": self.redis.url, "ROUTINELY_DATA_DIR": str(self.data),
            "ROUTINELY_AGENT": f"{SYSTEM_PYTHON} {self.base / 'agents' / 'door_attacker.py'}",
            "ROUTINELY_SANDBOX_PATHS": str(self.base / "agents"), "ROUTINELY_SESSION_USERS": "on",
            "GITHUB_GIT_URL": self.remotes.url, "ROUTINELY_ANTHROPIC_API_URL": self.fake.url,
            "ANTHROPIC_API_KEY": "sk-ant-bench-fake",
        }
        self.settings = Settings.from_env(self.env)
        self.conn = redis.Redis.from_url(self.redis.url)
        self.worker: subprocess.Popen | None = None
        exits.callback(self.stop_worker)

    # -- one routine per attack, and the honest warm-up beside it
    def apply(self, env: dict[str, str], limits: dict[str, int]) -> None:
        def routine(name: str, env: dict[str, str], limits: dict[str, int]) -> dict[str, Any]:
            environment: dict[str, Any] = {"network": "full", "env": {"DATA_DIR_GUESS": str(self.data), **env}}
            if limits:
                environment["limits"] = limits
            return {"name": name, "account": "bench", "prompt": "attack", "repositories": ["octo/api"],
                    "triggers": [{"api": {}}], "timeout_minutes": self.timeout / 60, "environment": environment,
                    "rate_limit": {"events": 1_000_000, "per_seconds": 3600}}
        catalog.apply(self.conn, {"accounts": [{"name": "bench", "plan": "enterprise", "extra_usage": True,
                                                "rate_limit": {"events": 1_000_000, "per_seconds": 3600}}],
                                  "routines": [routine("warmup", {"ATTACK": "none"}, {}),
                                               routine("attack", env, limits)]}, time.time())

    # -- the worker
    def start_worker(self, name: str) -> None:
        log = (self.base / f"worker-{name}.log").open("w")
        self.worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=self.env, cwd=ROOT,
                                       stdout=log, stderr=log)
        log.close()

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        for _ in range(3):  # a warm stop, then a cold one (the worker's second signal)
            if self.worker.poll() is not None:
                break
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(20)
            except subprocess.TimeoutExpired:
                time.sleep(1.1)  # a second signal within 1 s counts as the echo of the first
        if self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()
        self.worker = None

    def sample(self) -> Sample:
        pid = self.worker.pid if self.worker else 0
        figures = worker_status(pid)
        return Sample(figures.get("Threads", 0), figures.get("VmRSS", 0), figures.get("VmHWM", 0),
                      self.conn.info("memory")["used_memory"], open_files(pid))

    def settled(self) -> Sample:
        """A sample once the worker's thread count has not moved for 1 s (at most 15 s)."""
        end, last, since = time.monotonic() + 15, None, time.monotonic()
        while time.monotonic() < end:
            now = self.sample()
            if last is None or now.threads != last.threads:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 1:
                break
            time.sleep(0.1)
        return self.sample()

    # -- sessions
    def fire(self, routine: str) -> str:
        return fire_one(self.settings, self.conn, f"bench/{routine}", Firing(kind="manual"))["id"]

    def finish(self, sid: str, on_tick: Callable[[], None] = lambda: None) -> str:
        """Waits for the session's end (ticking), at most its timeout and a margin; cancels past that."""
        end = time.monotonic() + self.timeout + 30
        while time.monotonic() < end:
            record = sessions.get(self.conn, self.settings, sid)
            if record["status"] in FINAL:
                return record["status"]
            if self.worker is not None and self.worker.poll() is not None:
                return f"worker exited {self.worker.returncode}"
            on_tick()
            time.sleep(SAMPLE_SECONDS)
        sessions.cancel(self.conn, sid, iso(time.time()))
        return "bench timeout"

    def session(self, name: str, env: dict[str, str], limits: dict[str, int] | None = None) -> Outcome:
        """One attack: a fresh worker, a warm-up session, the baseline, the attack sampled, the after."""
        limits = limits or {}
        self.apply(env, limits)
        self.start_worker(name)
        try:
            warm = self.fire("warmup")
            warm_status = self.finish(warm)
            if warm_status not in FINAL:  # e.g. the worker does not import (the tree is being edited): rerun later
                tail = (self.base / f"worker-{name}.log").read_text()[-1500:]
                raise SystemExit(f"bench: the warm-up session ended {warm_status!r}; the worker said:\n{tail}")
            base = self.settled()
            peak = Sample(**vars(base))

            def tick() -> None:
                now = self.sample()
                for key, value in vars(now).items():
                    setattr(peak, key, max(getattr(peak, key), value))

            sid = self.fire("attack")
            ended = self.finish(sid, tick)
            after = self.settled()
        finally:
            self.stop_worker()
        record = sessions.get(self.conn, self.settings, sid)
        status = record["status"] if ended in FINAL else f"{ended} ({record['status']})"
        log = session_log.read(self.conn, sid)[0]
        found = [line for line in log if line.startswith("DOORS ")]
        return Outcome(name, base, peak, after, status, record.get("reason") or "", record.get("resources") or {}, log,
                       json.loads(found[-1][6:]) if found else {})


# -- the attacks: each runs one session and says what the session saw

@dataclass
class Row:
    outcome: Outcome
    disk: str = "-"
    view: str = ""


def honest(stack: Stack) -> Row:
    """0. The control: the warm-up agent again (each door once). Its growth is what any session costs."""
    out = stack.session("honest", {"ATTACK": "none"})
    return Row(out, view=", ".join(f"{k} {v}" for k, v in out.report.items() if k != "attack"))


def connections(stack: Stack, door: str) -> Row:
    """1. 2,000 idle connections to one door (opened in waves), held ~3 s: `held` open and
    unanswered at the end, `answered` refused by the door (its first line shown)."""
    out = stack.session(f"connections-{door}", {"ATTACK": "connections", "DOOR": door, "CONNECTIONS": "2000",
                                                "HOLD_SECONDS": "3"})
    got = out.report
    if not got:
        return Row(out, view="no report from the agent")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(got["counts"].items()))
    answers = "; ".join(f"{v}x {k!r}" for k, v in got["answers"].items())
    return Row(out, view=f"{counts} in {got['seconds']} s" + (f"; answers {answers}" if answers else "")
               + f"; session pids peak {out.resources.get('pids_peak')}")


def long_line(stack: Stack) -> Row:
    """2. 300 MB on stdout without a newline."""
    return log_row(stack.session("long-line", {"ATTACK": "long-line"}))


def log_flood(stack: Stack) -> Row:
    """3. 5,000 lines of 64 KB."""
    return log_row(stack.session("log-flood", {"ATTACK": "log-flood"}))


def log_row(out: Outcome) -> Row:
    cut = out.lines("routinely: the log was cut at")
    stored = sum(len(line) for line in out.log)
    view = f"log kept {len(out.log)} lines, {stored / MB:.1f} MB"
    if cut:
        view += "; " + re.sub(r"; the session ended.*", "", cut[-1].removeprefix("routinely: "))
    return Row(out, view=view)


def inodes(stack: Stack) -> Row:
    """4. 200,000 empty files in the workspace, disk_inodes 100,000."""
    out = stack.session("inodes", {"ATTACK": "inodes", "FILES": "200000"}, {"disk_inodes": INODES})
    made = [int(line.split()[1]) for line in out.lines("FILES ")]
    files = out.report.get("files", max(made, default=0))
    at_least = "" if out.report else ">="  # stopped: its last progress line
    return Row(out, disk=f"{at_least}{files} files / {INODES} ({files - INODES:+d})",
               view=f"agent: {out.report.get('error', 'no error') if out.report else 'stopped before it reported'}")


def disk(stack: Stack, folder: str) -> Row:
    """5. 1 GB as fast as it goes into one writable folder, disk_mb 100."""
    out = stack.session(f"disk-{folder}", {"ATTACK": "disk", "FOLDER": folder, "TOTAL_MB": "1024"}, {"disk_mb": DISK_MB})
    wrote = [int(line.split()[2]) for line in out.lines("WROTE ")]
    written = out.report.get("wrote", max(wrote, default=0)) / MB
    at_least = "" if out.report else ">="  # stopped: its last progress line (every 4 MB)
    res = out.resources
    return Row(out, disk=f"{at_least}{written:.0f} MB / {DISK_MB} MB ({written - DISK_MB:+.0f}); host {res.get('disk_mb')} MB",
               view=(f"agent: {out.report.get('error', 'no error')} in {out.report.get('seconds')} s" if out.report
                     else "agent stopped before it reported")
               + f"; memory peak {res.get('memory_peak_mb')} MB")


def gateway_paths(stack: Stack) -> Row:
    """6. The gateway's path classes; what reached the vendor."""
    before = len(stack.fake.requests)
    out = stack.session("gateway-paths", {"ATTACK": "gateway-paths"})
    reached = sorted({f"{r.method} {r.path}" for r in stack.fake.requests[before:]})
    statuses = ", ".join(f"{k} {v}" for k, v in out.report.get("statuses", {}).items())
    return Row(out, view=f"{statuses}; the vendor saw {reached}")


def push_relay(stack: Stack) -> Row:
    """7. Tags, refs outside branch_prefix, writes to the relay; what reached the remote."""
    before = stack.remotes.refs("octo/api")
    out = stack.session("push-relay", {"ATTACK": "push-relay"})
    after = stack.remotes.refs("octo/api")
    changed = sorted(ref for ref, sha in after.items() if before.get(ref) != sha) + \
        sorted(f"deleted {ref}" for ref in before if ref not in after)
    pushes = ", ".join(f"{k} {'ok' if v == 0 else 'refused'}" for k, v in out.report.get("pushes", {}).items())
    relay = ", ".join(f"{k} {v}" for k, v in out.report.get("relay", {}).items())
    return Row(out, view=f"pushes: {pushes}; relay: {relay}; the remote got {changed}")


ATTACKS: dict[str, Callable[[Stack], Row]] = {
    "honest": honest,
    **{f"connections-{door}": (lambda stack, door=door: connections(stack, door))
       for door in ("egress", "gateway", "github", "push")},
    "long-line": long_line,
    "log-flood": log_flood,
    "inodes": inodes,
    **{f"disk-{folder}": (lambda stack, folder=folder: disk(stack, folder)) for folder in ("workspace", "home", "tmp")},
    "gateway-paths": gateway_paths,
    "push-relay": push_relay,
}


# -- the table

def growth(o: Outcome) -> tuple[str, str, str, str]:
    """Threads, RSS (MB), open files of the worker and Redis used_memory (MB): over the baseline at the peak / after."""
    peak_kb = max(o.peak.rss_kb, o.peak.hwm_kb if o.peak.hwm_kb > o.base.hwm_kb else 0)  # VmHWM: a spike between samples
    return (f"+{o.peak.threads - o.base.threads} / {o.after.threads - o.base.threads:+d}",
            f"+{(peak_kb - o.base.rss_kb) / 1024:.1f} / {(o.after.rss_kb - o.base.rss_kb) / 1024:+.1f}",
            f"+{o.peak.fds - o.base.fds} / {o.after.fds - o.base.fds:+d}",
            f"+{(o.peak.redis - o.base.redis) / MB:.2f} / {(o.after.redis - o.base.redis) / MB:+.2f}")


def print_table(rows: list[Row]) -> None:
    header = ("attack", "threads", "RSS MB", "fds", "Redis MB", "disk: wrote / limit", "status: reason", "what the session saw")
    cells = []
    for row in rows:
        o = row.outcome
        reason = o.reason.removeprefix("routinely: ")
        cells.append((o.name, *growth(o), row.disk, o.status + (f": {reason[:60]}" if reason else ""), row.view))
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header) - 1)]
    print("worker figures and Redis: growth over the baseline, peak / after the session", flush=True)
    for line in [header, *cells]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) + "  " + str(line[-1]), flush=True)


# -- what the bench leaves: nothing

def leftovers(base: Path) -> list[int]:
    """Processes on this host that carry the bench's folder in their environment or command line."""
    marker, found = str(base).encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes() or marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.count("\n")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{os.cpu_count()} cores, load {load}, commit {commit}" + (f" + {dirty} changed files" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated attacks: " + ", ".join(ATTACKS))
    parser.add_argument("--timeout", type=float, default=120, help="seconds per session (its timeout_minutes)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        sys.exit(f"bench: unknown attack {unknown[0]!r}: choose from {', '.join(ATTACKS)}")
    if os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK):
        sys.exit("bench: run as root (session users) with /usr/bin/python3 installed")
    print(f"machine: {machine()}", flush=True)
    began = time.monotonic()
    rows: list[Row] = []
    with contextlib.ExitStack() as exits:
        stack = Stack(exits, args.timeout)
        base = stack.base
        for name in names:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            rows.append(ATTACKS[name](stack))
    left = leftovers(base)
    for pid in left:  # the bench's own: sessions its workers started
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    print_table(rows)
    print(f"{len(rows)} sessions in {time.monotonic() - began:.0f} s; left behind: {len(left)} processes, "
          f"folder {'gone' if not base.exists() else 'still there: ' + str(base)}; load now "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)


if __name__ == "__main__":
    main()
