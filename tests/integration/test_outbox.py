"""The session outbox through a real Redis that stops answering: nothing is lost or reordered."""
from __future__ import annotations

import io
import threading

import redis

from routinely.storage import keys
from routinely.records import session_log, sessions
from tests.support import CuttingProxy, wait_for
from workers.outage import Outage
from workers.outbox import Outbox


def test_lines_fields_and_the_outcome_wait_for_redis_in_order(conn, redis_server):
    conn.hset(keys.session("s1"), mapping={"status": "running"})
    proxy = CuttingProxy(redis_server.port)
    try:
        through = redis.Redis.from_url(proxy.url, socket_timeout=2, socket_connect_timeout=1)
        out = io.StringIO()
        outage = Outage("worker", proxy.url, out=out)
        box = Outbox(through, "s1", outage)
        box.start()
        box.log("before")
        proxy.mode = "refuse"
        box.log("during 1", "during 2")  # returns at once: kept, not raised
        box.update(resources="{}")
        assert outage.down
        done = threading.Thread(target=box.finish, args=("succeeded",), kwargs={"exit_code": 0})
        done.start()
        tried = proxy.refused
        assert wait_for(lambda: proxy.refused >= tried + 2)  # it tried twice more (its backoff) meanwhile
        assert done.is_alive()  # the outcome waits for Redis rather than being dropped
        assert conn.hget(keys.session("s1"), "status") == b"running"
        proxy.mode = "pass"
        done.join(30)
        assert not done.is_alive()
    finally:
        proxy.close()
    assert session_log.read(conn, "s1")[0] == ["before", "during 1", "during 2"]
    raw = sessions.get_raw(conn, "s1")
    assert raw[b"status"] == b"succeeded" and raw[b"exit_code"] == b"0" and raw[b"resources"] == b"{}"
    assert conn.zscore(keys.RUNNING, "s1") is None
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"routinely worker: Redis at {proxy.url} was unreachable from ")
