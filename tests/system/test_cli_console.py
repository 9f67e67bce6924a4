"""The CLI's console commands, run as a user runs them (a real process against real Redis)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from cli.main import build_parser
from routinely.when import local_and_relative, relative
from tests.support import apply, gh


@pytest.fixture
def cli(redis_server, tmp_path):
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PUBLIC_URL": "http://routinely.test",
           "TZ": "UTC"}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True)
        assert (done.returncode == 0) == ok, done.stderr
        return done

    return run


def test_version_and_help_on_every_command_and_flag(cli):
    assert cli("--version").stdout.strip() == "routinely 0.1.0"
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helped = {c.dest: c.help for c in subs._choices_actions}
    missing = []
    for name, sub in subs.choices.items():
        if not helped.get(name):
            missing.append(name)
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {action.dest}")
    assert missing == []
    assert "explain" in cli("--help").stdout and "--text" in cli("run", "--help").stdout


def test_pause_resume_tokens_and_listings_name_routines_alike(cli, conn):
    apply(conn, {"name": "r", "triggers": [{"api": {}}, {"schedule": {"preset": "daily", "time": "09:00", "timezone": "Asia/Tokyo"}}]},
          {"name": "quiet", "triggers": [gh(["pull_request"])]})
    table = cli("list").stdout.splitlines()
    assert table[0].split() == ["ACCOUNT", "NAME", "PAUSED", "TRIGGERS", "NEXT", "RUN", "LAST", "SESSION", "TODAY", "DROPPED"]
    row = next(line for line in table if line.split()[:2] == ["alice", "r"])
    assert "JST (in " in row and "0/25 (resets at " in row
    assert cli("pause", "r").stdout == "alice/r paused: its triggers are recorded as skipped\n"
    listed = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)}
    assert listed["r"]["paused"] is True and listed["r"]["account"] == "alice"
    scheduled = json.loads(cli("schedule", "list", "--json").stdout)
    assert [(s["name"], s["account"], s["paused"]) for s in scheduled] == [("r", "alice", True)]
    assert cli("schedule", "list").stdout.splitlines()[0].split() == ["ACCOUNT", "NAME", "SCHEDULE", "PAUSED", "NEXT", "RUN"]
    refused = cli("run", "r", ok=False)
    assert refused.stderr.startswith("routinely: routine alice/r is paused") and refused.stderr.count("\n") == 1
    assert json.loads(cli("resume", "alice/r", "--json").stdout) == {"name": "r", "account": "alice", "paused": False}
    nope = cli("pause", "nope", ok=False)
    assert nope.stderr.count("\n") == 1 and "no routine named 'nope'" in nope.stderr

    made = json.loads(cli("token", "create", "r", "--json").stdout)
    assert cli("token", "list").stdout.splitlines()[0].split() == ["TRIGGER", "ACCOUNT", "NAME", "STATE", "CREATED", "LAST", "USED"]
    listed = json.loads(cli("token", "list", "r", "--json").stdout)
    assert [{k: row[k] for k in ("trigger_id", "name", "account", "live")} for row in listed] == [
        {"trigger_id": made["trigger_id"], "name": "r", "account": "alice", "live": True}]
    assert listed[0]["created_at"] and listed[0]["last_used_at"] is None  # never fired
    cli("token", "revoke", made["trigger_id"])
    assert "revoked" in cli("token", "list").stdout and made["token"] not in cli("token", "list").stdout


def test_sessions_show_and_cancel(cli, conn):
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    sid = json.loads(cli("run", "r", "--text", "hi", "--json").stdout)["id"]
    assert cli("sessions").stdout.splitlines()[0].split() == ["ID", "STATUS", "ACCOUNT", "NAME", "TRIGGER", "CREATED"]
    shown = cli("sessions", "show", sid).stdout
    assert f"id:        {sid}" in shown and "status:    queued" in shown and "metered:   no" in shown
    assert "UTC (now)" in shown and f"page:      http://routinely.test/sessions/{sid}" in shown
    assert json.loads(cli("sessions", "show", sid, "--json").stdout)["trigger"] == {"kind": "manual", "text": "hi"}
    assert cli("sessions", "cancel", sid).stdout == f"{sid} canceled\n"
    assert "status:    canceled" in cli("sessions", "show", sid).stdout
    assert cli("sessions", "show", "session_nope", ok=False).stderr.count("\n") == 1
    assert "usage: routinely sessions show SESSION_ID" in cli("sessions", "show", ok=False).stderr


def test_a_listing_read_only_in_part_ends_quietly(redis_server, conn, tmp_path):
    """`routinely sessions | head -3`: the reader leaves early, and the CLI ends with 0 and no traceback."""
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "cli", "run", "r"], env=env, check=True, capture_output=True)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "cli", "sessions"], env=env, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == ""


def test_times_read_as_a_person_reads_them():
    now = 1_764_547_200.0  # 2025-12-01 00:00 UTC
    assert local_and_relative(now + 5 * 3600, now, "Asia/Tokyo") == "14:00 JST (in 5 h)"
    assert local_and_relative(now - 180, now, "UTC") == "Sun 30 Nov 23:57 UTC (3 min ago)"
    assert relative(now + 30, now) == "now" and relative(now + 1.5 * 3600, now) == "in 1.5 h"
    assert relative(now - 3 * 86_400, now) == "3 days ago"
