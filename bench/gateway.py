"""What the model gateway adds to a model request: median latency of N requests to the fake
Messages API directly and through a gateway (unix socket, token check, key swap, metering
into Redis), non-streaming and streamed. Needs redis-server.

  .venv/bin/python bench/gateway.py [N]
"""
from __future__ import annotations

import http.client
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from routinely.config import Settings  # noqa: E402
from routinely.routines.prices import Prices  # noqa: E402
from tests.fake_models import FakeMessages  # noqa: E402
from tests.support import RedisServer  # noqa: E402
from workers.gateway import Gateway  # noqa: E402
from workers.gateway.meter import Meter  # noqa: E402


class Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("gw")
        self.unix = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.unix)


def timed(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    server, fake = RedisServer(), FakeMessages()
    tmp = Path(tempfile.mkdtemp())
    try:
        settings = Settings(redis_url=server.url, data_dir=tmp, anthropic_api_url=fake.url, anthropic_api_key="k")
        conn = redis.Redis.from_url(server.url)
        meter = Meter(conn, Prices.load(), "session_bench", "a/r", "a", "UTC")
        gw = Gateway.start(settings, meter, str(tmp / "gw.sock"), lambda line: None)
        for stream in (False, True):
            body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": stream,
                               "messages": [{"role": "user", "content": "hi"}]}).encode()
            hdr = {"content-type": "application/json"}
            direct = http.client.HTTPConnection("127.0.0.1", fake.port)
            via = Unix(gw.socket_path)
            d = [timed(direct, "/v1/messages", body, {**hdr, "x-api-key": "k"}) for _ in range(n)]
            g = [timed(via, "/anthropic/v1/messages", body, {**hdr, "x-api-key": gw.token}) for _ in range(n)]
            md, mg = statistics.median(d) * 1000, statistics.median(g) * 1000
            print(f"{'streamed' if stream else 'plain   '}: direct {md:.2f} ms, through the gateway {mg:.2f} ms "
                  f"(+{mg - md:.2f} ms median over {n})")
        print(f"metered: {meter.total['requests']} requests, {meter.total['output_tokens']} output tokens")
        gw.close()
    finally:
        fake.close()
        server.stop()


if __name__ == "__main__":
    main()
