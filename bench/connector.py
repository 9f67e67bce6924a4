#!/usr/bin/env python3
"""github connector benchmark: what the door costs a session.

Prints (1) the time to start and to close one session's connector (uvicorn on a unix socket,
in a worker thread), (2) the latency of a tool call through the connector (MCP client →
policy → installation token (cached) → GitHub → record in Redis) beside the same GitHub
request made directly, against a local fake GitHub, and (3) the time to refuse a call.

  python bench/connector.py [--runs 200]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
import redis  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from routinely.storage import keys  # noqa: E402
from routinely.config import Settings  # noqa: E402
from routinely.routine_file import Routine  # noqa: E402
from tests.fake_github import FakeGitHub  # noqa: E402
from tests.support import RedisServer  # noqa: E402
from workers.connector import Connector, Policy  # noqa: E402
from routinely.github.github_auth import InstallationTokens  # noqa: E402


def ms(samples: list[float]) -> str:
    samples = sorted(samples)
    return f"median {statistics.median(samples) * 1000:.2f} ms, p95 {samples[int(len(samples) * 0.95) - 1] * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    server, fake = RedisServer(), FakeGitHub()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    tmp = Path(tempfile.mkdtemp(prefix="rly-bench-"))
    settings = Settings(redis_url=server.url, data_dir=tmp, github_app_id="1", github_private_key=key, github_api_url=fake.url)
    conn = redis.Redis.from_url(server.url)
    conn.hset(keys.INSTALLATIONS, "octo/api", 42)
    policy = Policy.of(Routine.model_validate({"name": "bench", "account": "a", "prompt": "p", "repositories": ["octo/api"],
                                               "triggers": [{"api": {}}]}))
    tokens = InstallationTokens(settings)
    try:
        starts, closes = [], []
        for i in range(20):
            t0 = time.perf_counter()
            c = Connector(f"s{i}", policy, str(tmp / f"{i}.sock"), conn, settings, tokens, lambda r, b: False, lambda line: None).start()
            t1 = time.perf_counter()
            c.close()
            starts.append(t1 - t0)
            closes.append(time.perf_counter() - t1)
        print(f"connector start: {ms(starts)}; close: {ms(closes)} (20 runs)")

        c = Connector("bench", policy, str(tmp / "bench.sock"), conn, settings, tokens, lambda r, b: False, lambda line: None).start()

        async def through(name: str, arguments: dict) -> list[float]:
            headers = {"Authorization": f"Bearer {c.token}"}
            async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=c.socket_path), headers=headers) as http:
                async with Client(streamable_http_client("http://127.0.0.1/mcp", http_client=http)) as client:
                    await client.call_tool(name, arguments)  # mint and cache the token first
                    out = []
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        await client.call_tool(name, arguments)
                        out.append(time.perf_counter() - t0)
                    return out

        async def direct() -> list[float]:
            async with httpx2.AsyncClient() as http:
                out = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    await http.get(f"{fake.url}/repos/octo/api/issues/7", headers={"Authorization": "token x"})
                    out.append(time.perf_counter() - t0)
                return out

        read = asyncio.run(through("get_issue", {"owner": "octo", "repo": "api", "issue_number": 7}))
        plain = asyncio.run(direct())
        refused = asyncio.run(through("get_issue", {"owner": "octo", "repo": "elsewhere", "issue_number": 7}))
        c.close()
        print(f"get_issue through the connector: {ms(read)} ({args.runs} calls)")
        print(f"the same GitHub request directly: {ms(plain)}")
        print(f"a refused call (other repository): {ms(refused)}")
    finally:
        fake.close()
        server.stop()


if __name__ == "__main__":
    main()
