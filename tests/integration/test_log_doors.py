"""The log pipe (agent stdout → worker → Redis) as a door: a real agent process run through
workers.process into a real Outbox and Redis, and the host-side figures it must keep to
(the worker's peak RSS, Redis used_memory), and what every reader gets back."""
from __future__ import annotations

import io
import math
import os
import re
import sys
import time
from pathlib import Path

import pytest
import redis

from routinely.storage import keys
from routinely.records import session_log
from routinely.config import ConfigError, Settings
from tests.support import CuttingProxy, proc_status, reset_peak
from workers import process
from workers.agents.transcript import read_lines
from workers.outage import Outage
from workers.outbox import MAX_PENDING_BYTES, Outbox

MB = 1024 * 1024






def _box(conn: redis.Redis, url: str, sid: str, settings: Settings) -> Outbox:
    conn.hset(keys.session(sid), mapping={"status": "running"})
    return Outbox(conn, sid, Outage("worker", url, out=io.StringIO()), settings.clock, settings.log_max_bytes)


def _agent(tmp_path: Path, code: str, on_lines) -> process.Result:
    """`code` run by a real python as the session's command, its output into `on_lines`."""
    return process.run([sys.executable, "-c", code], tmp_path, {"PATH": os.environ["PATH"]}, "",
                       time.monotonic() + 120, on_lines, lambda: False)


def _summary(lines: list[str]) -> tuple[int, int]:
    found = [m for line in lines if (m := re.match(r"routinely: the log was cut at .*: (\d+) line\(s\) \((\d+) bytes\)", line))]
    assert len(found) == 1, lines[-3:]
    return int(found[0][1]), int(found[0][2])


def test_a_300_mb_line_without_a_newline_comes_in_pieces_and_the_worker_stays_small(conn, redis_server, settings, tmp_path):
    settings = settings.with_(log_max_mb=2)
    box = _box(conn, redis_server.url, "s1", settings)
    before = reset_peak()
    code = "import sys\nfor _ in range(300): sys.stdout.buffer.write(b'x' * 1048576)"
    result = _agent(tmp_path, code, lambda lines: box.log(*lines))
    peak = proc_status("VmHWM")
    box.finish("succeeded", exit_code=0)

    assert result == process.Result("exited", 0)
    assert peak - before < 64 * 1024, f"the worker grew by {(peak - before) // 1024} MB reading one long line"
    lines = session_log.read(conn, "s1")[0]
    assert lines[0].endswith(process.CONTINUES) and lines[1].startswith(process.RESUMES)
    assert all(len(line.encode()) <= session_log.MAX_LINE_BYTES for line in lines)
    dropped_lines, dropped_bytes = _summary(lines)  # the pieces' bytes, with their marks
    unseen = 300 * MB - sum(line.count("x") for line in lines)
    assert unseen <= dropped_bytes <= unseen + dropped_lines * len((process.RESUMES + process.CONTINUES).encode())


def test_5000_lines_of_64_kb_stop_at_the_log_cap_and_the_ending_still_gets_in(conn, redis_server, settings, tmp_path):
    assert settings.log_max_mb == 16  # the default
    box = _box(conn, redis_server.url, "s2", settings)
    before = conn.info("memory")["used_memory"]
    code = "import sys\nline = '\U0001d11e' * 16384 + '\\n'\nfor _ in range(5000): sys.stdout.write(line)"  # 64 KiB each
    result = _agent(tmp_path, code, lambda lines: box.log(*lines))
    box.log("routinely: the agent exited with code 0")
    box.finish("succeeded", exit_code=0)

    assert result == process.Result("exited", 0)
    growth = conn.info("memory")["used_memory"] - before
    assert growth <= settings.log_max_bytes + session_log.RESERVE_BYTES + MB, f"Redis grew by {growth / MB:.1f} MB"
    lines = session_log.read(conn, "s2")[0]
    assert sum("this log reached its cap (16 MB" in line for line in lines) == 1
    assert lines[-2] == "routinely: the agent exited with code 0"
    assert lines[-1].startswith("routinely: the log was cut at 16 MB: ") and lines[-1].endswith("the session ended succeeded")
    pieces_per_line = math.ceil(16384 * 4 / (process.LINE_BYTES // 4 * 4))
    kept = sum(1 for line in lines if "\U0001d11e" in line)
    assert _summary(lines)[0] + kept == 5000 * pieces_per_line
    assert all(len(line.encode()) <= session_log.MAX_LINE_BYTES for line in lines)


def test_escape_sequences_and_fake_service_lines_come_back_inert_in_every_reader(conn, redis_server, settings, client, tmp_path):
    box = _box(conn, redis_server.url, "s3", settings)
    code = r"""
import json, sys
out = sys.stdout.buffer
out.write(b"\x1b[2J\x1b[31mred\x1b[0m\n")
out.write(b"routinely: the agent exited with code 0\n")
out.write(b"  Routinely: session succeeded\n")
out.write("\u200broutinely: behind a zero-width space\n".encode())
out.write("\u202eevil\u202c and C1 \u009b31m\n".encode())
out.write(b"progress 10%\rroutinely: over the line\r\n")
out.write(b"\xff\x9b raw bytes\n")
event = {"type": "assistant", "message": {"content": [
    {"type": "text", "text": "done\nroutinely: from the agent's JSON\x1b]0;title\x07"}]}}
out.write(json.dumps(event).encode() + b"\n")
"""
    result = _agent(tmp_path, code, lambda lines: box.log(*read_lines("claude-stream-json", lines).log))
    service = ["routinely: egress refused: evil.example\nroutinely: smuggled by a host name\x1b[8m"]
    box.log(*service)
    box.finish("succeeded", exit_code=0)
    assert result == process.Result("exited", 0)

    text = client.get("/api/sessions/s3/log").data.decode()  # the page polls this; tests read it too
    assert text.splitlines() == session_log.read(conn, "s3")[0]
    for ch in text:
        assert ch in "\t\n" or not (ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f or ch in "\u200b\u202c\u202e"), repr(ch)
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("routinely:")] == [session_log.clean(s) for s in service]
    assert lines == [
        r"\x1b[2J\x1b[31mred\x1b[0m",
        "(session) routinely: the agent exited with code 0",
        "(session)   Routinely: session succeeded",
        r"\u200broutinely: behind a zero-width space",
        r"\u202eevil\u202c and C1 \x9b31m",
        r"progress 10%\x0droutinely: over the line",
        "\ufffd\ufffd raw bytes",
        "agent: done",
        r"agent: routinely: from the agent's JSON\x1b]0;title\x07",
        r"routinely: egress refused: evil.example\x0aroutinely: smuggled by a host name\x1b[8m",
    ]


def test_a_log_stored_before_escaping_reads_escaped(conn, client):
    conn.hset(keys.session("s4"), mapping={"status": "succeeded"})
    conn.xadd(keys.session_log("s4"), {"l": "old \x1b[31mred\r"})
    assert session_log.read(conn, "s4")[0] == [r"old \x1b[31mred\x0d"]
    assert client.get("/api/sessions/s4/log").data.decode() == "old \\x1b[31mred\\x0d\n"


def test_lines_held_through_an_outage_are_bounded_in_bytes(conn, redis_server, settings):
    conn.hset(keys.session("s5"), mapping={"status": "running"})
    proxy = CuttingProxy(redis_server.port)
    try:
        through = redis.Redis.from_url(proxy.url, socket_timeout=2, socket_connect_timeout=1)
        box = Outbox(through, "s5", Outage("worker", proxy.url, out=io.StringIO()), log_max_bytes=64 * MB)
        proxy.mode = "refuse"
        before = reset_peak()
        for i in range(3000):  # 48 MB while Redis is away
            box.log(f"{i:05d}" + "y" * 15_995)
        peak = proc_status("VmHWM")
        assert peak - before < 2 * MAX_PENDING_BYTES // 1024, f"the worker grew by {(peak - before) // 1024} MB in an outage"
        proxy.mode = "pass"
        box.finish("succeeded", exit_code=0)
    finally:
        proxy.close()
    lines = session_log.read(conn, "s5")[0]
    lost = int(re.match(r"routinely: (\d+) log line\(s\) lost while Redis was unreachable", lines[0])[1])
    assert lost + len(lines) - 1 == 3000 and lines[-1].startswith("02999")


def test_the_log_cap_is_a_setting():
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0", "ROUTINELY_DATA_DIR": "/nonexistent"}
    assert Settings.from_env(env).log_max_bytes == 16 * MB
    assert Settings.from_env({**env, "ROUTINELY_LOG_MAX_MB": "2"}).log_max_bytes == 2 * MB
    with pytest.raises(ConfigError, match="ROUTINELY_LOG_MAX_MB must be a number of megabytes"):
        Settings.from_env({**env, "ROUTINELY_LOG_MAX_MB": "0"})


def test_past_the_reserve_service_lines_are_counted_too_and_the_last_line_still_says_how_it_ended(conn, redis_server, settings):
    box = _box(conn, redis_server.url, "s6", settings.with_(log_max_mb=0.1))
    box.log(*["z" * 1000] * 200)  # the session's output: past the cap
    box.log(*[f"routinely: egress refused: host{i}.example" + "." * 1000 for i in range(1000)])  # past the reserve
    box.finish("timed_out", reason="routinely: the agent ran past timeout_minutes and was stopped")
    lines = session_log.read(conn, "s6")[0]
    stored = sum(len(line.encode()) for line in lines)
    assert stored <= 0.1 * MB + session_log.RESERVE_BYTES + session_log.MAX_LINE_BYTES
    assert any(line.startswith("routinely: egress refused") for line in lines)
    dropped, _ = _summary(lines)
    assert dropped + sum(line.startswith(("z", "routinely: egress")) for line in lines) == 1200
    assert lines[-1].endswith("the session ended timed_out (the agent ran past timeout_minutes and was stopped)")
