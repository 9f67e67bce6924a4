#!/usr/bin/env python3
"""routinely.storage.wire against redis-py, on the start step's one transaction (issue #28).

The receiver's hot path (routinely.firing.start.Starter._execute) sends, for a delivery that makes
a session, one MULTI: SET of the raw payload, then EVALSHA of start.lua with the plan's KEYS
and ARGV. This runs that very transaction, against a throwaway redis-server on a free port,
through:

  wire              Starter._execute as it is today (routinely.storage.wire: RESP built by hand,
                    hiredis Reader, one socket per thread)
  redis-py evalsha  conn.pipeline(transaction=True): SET + EVALSHA of the script that
                    conn.register_script made, NOSCRIPT answered by SCRIPT LOAD and a retry
  redis-py Script   the same pipeline, the script queued as register_script documents it
                    (`script(keys, args, client=pipe)`: redis-py sends SCRIPT EXISTS first,
                    a second round trip on every execute)

The calls are built outside the timed part the way the receiver builds them: the fixture
pull_request.opened payload (compacted, as GitHub sends it) decoded by
routinely.firing.deliveries.decode, routed by Catalog.matches against a catalog of 21 routines (one
matches), planned by start_plan.build and laid out by start_plan.encode. Every call has its own
delivery, event and session, so every one is a first delivery that makes a session and its job.
Trimming is off (the receiver trims each index at most once a second: rare at these rates).

For each client, single-threaded and with --threads threads, three runs interleaved (the
order rotates between runs): calls/s (wall), client CPU per call (time.process_time over the
whole process: every thread's user + system time) and Redis CPU per call (INFO cpu). Before
timing, one identical plan is applied through each client on an emptied Redis and the
resulting keyspace (every key's type, value and TTL) is compared.

  python bench/wire.py [--calls 4000] [--runs 3] [--threads 16]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import redis  # noqa: E402
import yaml  # noqa: E402
from redis.exceptions import NoScriptError  # noqa: E402

from routinely.routines import catalog as catalogs  # noqa: E402
from routinely.storage import ids, keys
from routinely.firing import start_plan
from routinely.config import Settings  # noqa: E402
from routinely.firing.deliveries import decode  # noqa: E402
from routinely.firing.start import Starter  # noqa: E402
from routinely.storage.wire import Segment  # noqa: E402
from tests.support import RedisServer  # noqa: E402

PAYLOAD = ROOT / "tests" / "fixtures" / "pull_request.opened.json"
NOW = 1_765_000_000.0  # a fixed clock: the verification's plans are identical through each client
OTHERS = "\n".join(
    f"""  - name: other-{i}
    account: {("bench", "team", "ops")[i % 3]}
    prompt: Look at this.
    repositories: [acme/repo-{i}]
    triggers:
      - github:
          events: [pull_request.opened, issues.opened]
          filters: [{{field: base_branch, op: equals, value: main}}]""" for i in range(20))
ROUTINES = f"""
accounts:
  - {{name: bench, plan: enterprise, extra_usage: true, rate_limit: {{events: 1000000, per_seconds: 3600}}}}
  - {{name: team, plan: team}}
  - {{name: ops, plan: enterprise}}
routines:
  - name: review
    account: bench
    prompt: Review this pull request.
    repositories: [Codertocat/Hello-World]
    rate_limit: {{events: 1000000, per_seconds: 3600}}
    triggers:
      - github:
          events: [pull_request.opened]
          filters:
            - {{field: base_branch, op: equals, value: master}}
            - {{field: title, op: matches_regex, value: ".*README.*"}}
{OTHERS}
"""

Call = tuple[start_plan.StartPlan, list[str], list[Any]]


class Bench:
    def __init__(self, url: str, data_dir: Path) -> None:
        self.settings = Settings(redis_url=url, data_dir=data_dir)
        self.conn = redis.Redis.from_url(url)  # setup and inspection only
        self.raw = json.loads(PAYLOAD.read_bytes())
        self.body = orjson.dumps(self.raw)
        self.catalog: catalogs.Catalog | None = None

    def reset(self) -> None:
        """An empty Redis holding only the catalog (the script cache survives FLUSHALL's
        keys; each client's first call meets NOSCRIPT or not the same way either way)."""
        self.conn.flushall()
        self.catalog, _ = catalogs.apply(self.conn, yaml.safe_load(ROUTINES), NOW)

    def calls(self, n: int, tag: str, job, new_id: Callable[[str], str] | None = None) -> list[Call]:
        out = []
        for i in range(n):
            firing = decode("pull_request", f"{tag}-{i}", self.raw, self.body)
            record: dict[str, Any] = {}
            matched = [r for r, _ in self.catalog.matches("pull_request", "opened", firing.repository, self.raw, record)]
            firing.filter_fields = record
            plan = start_plan.build(firing, self.catalog, matched, NOW + i * 1e-4,
                                    new_id=new_id or start_plan._new_id, trim=lambda index: False)
            assert plan.keeps_payload and len(plan.sessions) == 1
            kv, argv = start_plan.encode(plan, job, self.settings.queue_name)
            out.append((plan, kv, argv))
        return out


# -- the clients: each is built once per (run, mode) and called with one prepared Call

def wire_client(bench: Bench) -> Callable[[Call], Any]:
    """Today's path: Starter._execute (routinely.storage.wire) on the plan's KEYS and ARGV."""
    starter = Starter(bench.conn, bench.settings)
    return lambda call: starter._execute(call[1], call[2], call[0])


def _plain(argv: list[Any]) -> list[Any]:
    # redis-py packs plain arguments: the job template's fields go in as a list, not a Segment
    out: list[Any] = []
    for v in argv:
        if type(v) is Segment:
            out += FLAT
        else:
            out.append(v)
    return out


FLAT: list[str] = []  # the job template's fields, flat (set in main)


def redispy_evalsha_client(bench: Bench) -> Callable[[Call], Any]:
    """redis-py: transaction pipeline, SET + EVALSHA of the registered script; NOSCRIPT →
    SCRIPT LOAD and the transaction again (as Starter does)."""
    conn = redis.Redis.from_url(bench.settings.redis_url)
    script = conn.register_script(start_plan.SCRIPT)

    def run(call: Call) -> Any:
        plan, kv, argv = call
        args = _plain(argv)
        for _ in range(2):
            pipe = conn.pipeline(transaction=True)
            pipe.set(keys.payload(plan.event_id), plan.payload, ex=keys.EVENT_TTL)
            pipe.evalsha(script.sha, len(kv), *kv, *args)
            try:
                return pipe.execute()[1]
            except NoScriptError:
                conn.script_load(start_plan.SCRIPT)
        raise redis.RedisError("Redis keeps forgetting the start script")

    return run


def redispy_script_client(bench: Bench) -> Callable[[Call], Any]:
    """redis-py: transaction pipeline, SET + the registered Script called on the pipeline
    (redis-py checks SCRIPT EXISTS before each execute and loads it when missing)."""
    conn = redis.Redis.from_url(bench.settings.redis_url)
    script = conn.register_script(start_plan.SCRIPT)

    def run(call: Call) -> Any:
        plan, kv, argv = call
        pipe = conn.pipeline(transaction=True)
        pipe.set(keys.payload(plan.event_id), plan.payload, ex=keys.EVENT_TTL)
        script(keys=kv, args=_plain(argv), client=pipe)
        return pipe.execute()[1]

    return run


CLIENTS = {"wire": wire_client, "redis-py evalsha": redispy_evalsha_client, "redis-py Script": redispy_script_client}


# -- verification: one identical plan through each client, the keyspace compared

def keyspace(conn: redis.Redis) -> dict[bytes, tuple]:
    out = {}
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            value: Any = conn.get(key)
        elif kind == "hash":
            value = sorted(conn.hgetall(key).items())
        elif kind == "list":
            value = conn.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(conn.smembers(key))
        elif kind == "zset":
            value = conn.zrange(key, 0, -1, withscores=True)
        else:
            value = conn.dump(key)
        ttl = conn.ttl(key)
        out[key] = (kind, value, ttl if ttl < 0 else round(ttl, -1))  # TTLs to 10 s: the calls are seconds apart
    return out


def verify(bench: Bench, job) -> None:
    fixed = {"event": ids.event_id(), "session": ids.session_id()}
    seen = {}
    for name, make in CLIENTS.items():
        bench.reset()
        bench.conn.script_flush()  # each client meets NOSCRIPT on its first call
        client = make(bench)
        [call] = bench.calls(1, "verify", job, new_id=fixed.__getitem__)
        reply = client(call)
        seen[name] = (reply, keyspace(bench.conn))
    (ref_reply, ref_keys), *rest = seen.values()
    print(f"verification: one call on an emptied Redis writes {len(ref_keys)} keys "
          f"({', '.join(sorted(k.decode().split(':')[0] + ':' + k.decode().split(':')[1] for k in ref_keys))})")
    for name, (reply, space) in list(seen.items())[1:]:
        same = reply == ref_reply and space == ref_keys
        print(f"  {name} vs wire: reply {'same' if reply == ref_reply else 'DIFFERENT'}, "
              f"keyspace {'same' if space == ref_keys else 'DIFFERENT'}")
        if not same:
            for key in sorted(set(space) | set(ref_keys)):
                if space.get(key) != ref_keys.get(key):
                    print(f"    {key!r}: wire {ref_keys.get(key)!r:.200} / {name} {space.get(key)!r:.200}")
            raise SystemExit("the clients do not write the same state")


# -- timing

def redis_cpu(conn: redis.Redis) -> float:
    info = conn.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def measure(bench: Bench, job, name: str, threads: int, calls: int, tag: str) -> dict[str, float]:
    bench.reset()
    client = CLIENTS[name](bench)
    per = calls // threads
    warm = 50
    work = [bench.calls(warm + per, f"{tag}-t{t}", job) for t in range(threads)]
    gate = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker(batch: list[Call]) -> None:
        try:
            for call in batch[:warm]:  # this thread's connection opened, the script loaded
                client(call)
            gate.wait()
            for call in batch[warm:]:
                reply = client(call)
                if reply[0] != 2:
                    raise RuntimeError(f"a call did not start a session: {reply[:2]}")
            gate.wait()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            gate.abort()

    if threads == 1:
        for call in work[0][:warm]:
            client(call)
        rcpu, cpu, wall = redis_cpu(bench.conn), time.process_time(), time.perf_counter()
        for call in work[0][warm:]:
            client(call)
        wall, cpu, rcpu = time.perf_counter() - wall, time.process_time() - cpu, redis_cpu(bench.conn) - rcpu
    else:
        pool = [threading.Thread(target=worker, args=(work[t],)) for t in range(threads)]
        for t in pool:
            t.start()
        try:
            gate.wait()
            rcpu, cpu, wall = redis_cpu(bench.conn), time.process_time(), time.perf_counter()
            gate.wait()
            wall, cpu, rcpu = time.perf_counter() - wall, time.process_time() - cpu, redis_cpu(bench.conn) - rcpu
        except threading.BrokenBarrierError:
            pass
        for t in pool:
            t.join()
        if errors:
            raise errors[0]
    n = per * threads
    sessions = bench.conn.zcard(keys.SESSIONS)
    if sessions != n + warm * threads:
        raise SystemExit(f"{name}: {sessions} sessions in Redis, expected {n + warm * threads}")
    return {"rate": n / wall, "cpu_us": cpu / n * 1e6, "redis_us": rcpu / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=4000, help="timed calls per run and mode")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    server = RedisServer()
    try:
        bench = Bench(server.url, Path(tempfile.mkdtemp(prefix="routinely-bench-wire-")))
        bench.reset()
        job = Starter(bench.conn, bench.settings)._job
        FLAT[:] = job.flat()
        print(f"redis-py {redis.__version__}, hiredis parser: {redis.utils.HIREDIS_AVAILABLE}; "
              f"payload {len(bench.body)} B; load average {os.getloadavg()[0]:.2f} (1 min)")
        verify(bench, job)
        names = list(CLIENTS)
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for run in range(args.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for threads in (1, args.threads):
                for name in order:
                    got = measure(bench, job, name, threads, args.calls, f"r{run}-{threads}-{name.replace(' ', '')}")
                    results.setdefault((name, threads), []).append(got)
                    print(f"  run {run + 1} {name:<17} {threads:>2} thread(s): {got['rate']:7.0f} calls/s, "
                          f"client CPU {got['cpu_us']:5.0f} µs/call, Redis CPU {got['redis_us']:4.0f} µs/call "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
        print("\nmedian of runs (each run's figure in brackets)")
        print("| client | threads | calls/s | client CPU µs/call | Redis CPU µs/call |")
        print("|---|---:|---:|---:|---:|")
        for threads in (1, args.threads):
            for name in names:
                rs = results[(name, threads)]
                cell = lambda k, f: f"{statistics.median(r[k] for r in rs):{f}} ({' / '.join(f'{r[k]:{f}}' for r in rs)})"  # noqa: E731
                print(f"| {name} | {threads} | {cell('rate', '.0f')} | {cell('cpu_us', '.0f')} | {cell('redis_us', '.0f')} |")
        print("\nwire's advantage over the best redis-py option (median, >1 = wire better)")
        for threads in (1, args.threads):
            med = {n: {k: statistics.median(r[k] for r in results[(n, threads)]) for k in ("rate", "cpu_us")}
                   for n in names}
            best_rate = max(med[n]["rate"] for n in names[1:])
            best_cpu = min(med[n]["cpu_us"] for n in names[1:])
            print(f"  {threads:>2} thread(s): calls/s {med['wire']['rate'] / best_rate:.2f}x, "
                  f"client CPU {best_cpu / med['wire']['cpu_us']:.2f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
