"""One owner of a session's record: every write after the start script goes through
routinely.records.sessions (write, transition), which knows the record's fields."""
from __future__ import annotations

import re

import pytest

from routinely.storage import keys
from routinely.records import sessions
from tests.support import ROOT_DIR


ROOT = ROOT_DIR


def test_a_field_the_record_does_not_have_is_refused_and_nothing_is_written(conn):
    conn.hset(keys.session("session_x"), "status", "running")
    with pytest.raises(KeyError, match="no field \\['nope'\\]: declare it in routinely.records.sessions"):
        sessions.write(conn, "session_x", usage="{}", nope=1)
    with pytest.raises(KeyError):
        sessions.transition(conn, "session_x", ["running"], status="failed", nope=1)
    assert conn.hgetall(keys.session("session_x")) == {b"status": b"running"}
    sessions.write(conn, "session_x", usage=b"{}", exit_code=None, pid=7)
    assert conn.hgetall(keys.session("session_x")) == {b"status": b"running", b"usage": b"{}", b"exit_code": b"", b"pid": b"7"}


def test_no_module_but_the_store_writes_a_session_record_itself():
    writes = re.compile(r"\.hset\(keys\.session\(|hset\(self\.key|'HSET', session")
    offenders = [str(p.relative_to(ROOT)) for d in ("routinely", "app", "workers", "cli") for p in (ROOT / d).rglob("*.py")
                 if p.name != "sessions.py" and writes.search(p.read_text())]
    assert offenders == []
