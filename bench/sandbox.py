#!/usr/bin/env python3
"""What the session sandbox costs: starting a command in it, and a request through its egress proxy.

1. `true` N times, bare (fork/exec as the worker does it) and inside the full sandbox
   (bwrap with every namespace, the launcher, the cgroup), median and p90 in ms;
2. N small HTTP GETs to a loopback server, direct and through the egress proxy's socket on
   one kept-alive connection (the server is named in allow_hosts, as a private host must be).

  python bench/sandbox.py [--n 50]
"""
from __future__ import annotations

import argparse
import http.server
import os
import socket
import socketserver
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers import process  # noqa: E402
from workers.sandbox import Sandbox  # noqa: E402
from workers.sandbox.egress import EgressProxy  # noqa: E402


def stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"median {statistics.median(ordered) * 1000:.1f} ms, p90 {ordered[int(len(ordered) * 0.9)] * 1000:.1f} ms"


def run_once(argv, cwd, env, **kw) -> float:
    began = time.perf_counter()
    result = process.run(argv, cwd, env, "", time.monotonic() + 60, lambda lines: None, lambda: False, **kw)
    assert result.exit_code == 0, result
    return time.perf_counter() - began


def start_cost(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="rly-bench-"))
    env = {"PATH": "/usr/bin:/bin"}
    bare = [run_once(["true"], work, env) for _ in range(n)]
    box = Sandbox.open({"network": "full", "allow_hosts": []}, "bench-session", False, lambda line: None)
    box.share(work, writable=True)
    boxed = []
    for _ in range(n):
        cmd = box.command(["true"], env, work, work)
        boxed.append(run_once(cmd.argv, cmd.cwd, cmd.env, user=cmd.user, pass_fds=cmd.pass_fds, join=cmd.join,
                              rlimits=cmd.rlimits))
    box.close()
    print(f"start `true` bare:        {stats(bare)}")
    print(f"start `true` in sandbox:  {stats(boxed)}  (cgroup: {box.bounds.enforcer.kind})")


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # one write: no delayed-ACK stall in the measurement
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def log_message(self, *a):
        pass


def get_many(sock: socket.socket, target: str, host: str, n: int) -> list[float]:
    f = sock.makefile("rb")
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        f.readline()
        while f.readline().strip():
            pass
        f.read(2)
        samples.append(time.perf_counter() - began)
    return samples


def proxy_cost(n: int) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    direct = socket.create_connection(("127.0.0.1", port))
    direct.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    plain = get_many(direct, "/", "x", n)
    folder = tempfile.mkdtemp(prefix="rly-bench-")
    proxy = EgressProxy("full", [f"127.0.0.1:{port}"], lambda line: None, os.path.join(folder, "p.sock"))
    via = socket.socket(socket.AF_UNIX)
    via.connect(proxy.sock)
    proxied = get_many(via, f"http://127.0.0.1:{port}/", "x", n)
    print(f"GET direct:               {stats(plain)}")
    print(f"GET through egress proxy: {stats(proxied)}  (kept alive, each request checked)")
    proxy.close()
    server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    start_cost(args.n)
    proxy_cost(args.n * 10)


if __name__ == "__main__":
    main()
