"""The hot path's connection: RESP it builds, replies hiredis reads, errors it maps, reconnects."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
from redis.connection import Connection
from redis.exceptions import NoScriptError

from routinely.storage.wire import Segment, Wire, pack


def test_pack_writes_what_redis_py_writes():
    args = ("EVALSHA", "abc", 2, "k1", "k2", b"\x00\xffbytes", "ünï", 0, -7)
    assert pack(*args) == b"".join(Connection().pack_command(*args))
    assert pack("X", Segment(["a", b"b", 3]), "y") == b"".join(Connection().pack_command("X", "a", b"b", 3, "y"))
    for wrong in (1.5, True, None):
        with pytest.raises(TypeError):
            pack("SET", "k", wrong)


def test_replies_errors_and_transactions(redis_server, conn):
    wire = Wire(redis_server.url)
    assert wire.call("SET", "k", "v") == b"OK" and wire.call("GET", "k") == b"v"
    with pytest.raises(NoScriptError):
        wire.call("EVALSHA", "0" * 40, 0)
    with pytest.raises(redis.ResponseError):
        wire.call("NOSUCHCOMMAND")
    replies = wire.transaction([pack("INCR", "n"), pack("HSET", "k", "a", "b")])
    assert replies[0] == 1 and isinstance(replies[1], redis.ResponseError)  # the other command still ran
    assert wire.call("GET", "k") == b"v"  # the connection is still in step


def test_a_connection_the_server_dropped_is_replaced(redis_server, conn):
    wire = Wire(redis_server.url)
    assert wire.call("PING") == b"PONG"
    conn.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(redis.ConnectionError):
        wire.call("PING")  # the one call on the dead socket fails fast...
    assert wire.call("PING") == b"PONG"  # ...and the next reconnects
    conn.client_kill_filter(_type="normal", skipme=True)
    time.sleep(1.1)  # idle past the check: the close is noticed before the command is sent
    assert wire.call("PING") == b"PONG"


def test_unreachable_is_a_connection_error():
    with pytest.raises(redis.ConnectionError):
        Wire("redis://127.0.0.1:1/0").call("PING")


def test_unix_socket_password_and_database():
    tmp = Path(tempfile.mkdtemp(prefix="routinely-wire-"))
    sock = tmp / "redis.sock"
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", "0", "--unixsocket", str(sock), "--requirepass", "pw",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.02)
        wire = Wire(f"unix://{sock}?db=3&password=pw")
        assert wire.call("SET", "k", "v") == b"OK"
        assert redis.Redis.from_url(f"unix://{sock}?db=3&password=pw").get("k") == b"v"
        assert redis.Redis.from_url(f"unix://{sock}?db=0&password=pw").get("k") is None
        with pytest.raises(redis.ResponseError):
            Wire(f"unix://{sock}?password=wrong").call("PING")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
