"""A session record has one reader: routinely.records.sessions.Session decodes the stored hash once,
so a field means the same thing to the API, the runner, the reaper and the worker."""
from __future__ import annotations

import dataclasses
import time

import orjson

from routinely.routines import catalog
from routinely.firing import chain
from routinely.storage import keys
from routinely.records import session_context, sessions
from routinely.records.sessions import Session
from routinely.firing.start import Firing, fire_one


FIELDS = {f.name for f in dataclasses.fields(Session)}


def fire(conn, settings, **routine) -> str:
    """One session the start script made (an API firing of routine alice/r)."""
    spec = {"name": "r", "account": "alice", "prompt": "do it", "repositories": ["octo/api"], "triggers": [{"api": {}}]}
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "enterprise"}], "routines": [{**spec, **routine}]},
                  time.time())
    return fire_one(settings, conn, "r", Firing(kind="api", text="please"))["id"]


def test_every_field_a_writer_may_set_is_an_attribute():
    assert sessions.WRITABLE <= FIELDS
    assert session_context.PROMPT_FIELD in FIELDS  # the runner's copy of the prompt


def test_a_record_the_start_script_wrote_reads_whole(conn, settings):
    sid = fire(conn, settings, concurrency={"group": "nightly", "debounce_seconds": 60})
    raw = sessions.get_raw(conn, sid)
    assert {k.decode() for k in raw} <= FIELDS  # no field of the record goes unread
    s = sessions.load(conn, sid)
    assert (s.id, s.routine, s.routine_key, s.account, s.status) == (sid, "r", "alice/r", "alice", "queued")
    assert s.trigger["kind"] == "api" and s.trigger["text"] == "please"
    assert s.event_id == raw[b"event_id"].decode() and s.created_at == raw[b"created_at"].decode()
    assert s.metered is False and s.chain_depth == chain.ROOT_DEPTH and s.role_check is None
    assert s.group == "nightly" and s.group_key == raw[b"group_key"].decode() and s.start_at
    assert (s.started_at, s.exit_code, s.pid, s.usage, s.secrets_in_env) == (None, None, None, None, ())
    # the API's answer is built on it, field for field as the hash says
    shown = sessions.get(conn, settings, sid)
    assert shown == {**sessions.to_public(s, settings), "actions": [], "github_reads": 0}
    assert shown["trigger"] == orjson.loads(raw[b"trigger"]) and shown["group"] == "nightly"


def test_missing_fields_read_as_none_or_empty(conn, settings):
    assert sessions.load(conn, "session_gone") is None
    assert Session.from_raw({}) == Session()
    conn.hset(keys.session("session_stray"), mapping={"status": "running", "exit_code": "", "chain_depth": "x"})
    s = sessions.load(conn, "session_stray")
    assert (s.id, s.status, s.exit_code, s.trigger, s.chain_depth) == ("", "running", None, {}, chain.ROOT_DEPTH)
    public = sessions.to_public(s, settings)
    assert public["id"] is None and public["exit_code"] is None and public["trigger"] == {}
    assert "reason" not in public and "group" not in public


def test_round_trip_through_write_and_transition(conn, settings):
    sid = fire(conn, settings)
    assert sessions.transition(conn, sid, ["queued"], status="running", started_at="2026-01-01T10:00:00.000Z",
                               host="box-1", pid=4242)
    usage = {"requests": 1, "cost_usd": None, "models": ["m"]}
    sessions.write(conn, sid, sandbox="on", sandbox_pid=77, sandbox_uid=390001, sandbox_cgroup="session-x",
                   resources=orjson.dumps({"peak_mb": 12}).decode(), secrets_in_env="A,B", usage=orjson.dumps(usage),
                   prompt="do it — please")
    assert sessions.transition(conn, sid, ["running"], status="failed", exit_code=-9, reason="killed")
    s = sessions.load(conn, sid)
    assert (s.status, s.host, s.pid, s.exit_code, s.reason) == ("failed", "box-1", 4242, -9, "killed")
    assert (s.sandbox, s.sandbox_pid, s.sandbox_uid, s.sandbox_cgroup) == ("on", 77, 390001, "session-x")
    assert s.resources == {"peak_mb": 12} and s.usage == usage and s.prompt == "do it — please"
    assert s.secrets_in_env == ("A", "B") and sessions.to_public(s, settings)["secrets_in_env"] == ["A", "B"]
    # what a requeued session leaves behind reads as not set
    sessions.write(conn, sid, **sessions.REQUEUED)
    s = sessions.load(conn, sid)
    assert (s.started_at, s.host, s.pid, s.sandbox_pid, s.sandbox_uid, s.sandbox_cgroup) == (None,) * 6


def test_chain_depth_is_the_record_s_or_a_root():
    assert Session.from_raw({b"chain_depth": b"3"}).chain_depth == 3
    assert Session.from_raw({}).chain_depth == chain.ROOT_DEPTH  # sessions from before chains
