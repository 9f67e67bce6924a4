"""Redaction and the push door's scan: a value the session could see is stored as
`[secret NAME]` in its log, transcript and actions, and a push whose commits carry one (or a
token of a known shape) is refused with the file and line, never the value.

Real Redis (the outbox writes the log and transcript as a session does), real git pushes
through the push door (as in tests/test_push_door.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from routinely.records import actions, session_log, transcript
from routinely.storage import keys
from routinely.secrets.redact import MIN_CHARS, Redactor
from tests.support import git, one_commit_remote
from workers.outage import Outage
from workers.outbox import Outbox
from workers.pushguard import PushGuard
from workers.pushscan import Scanner
from workers.sandbox.launch import TcpBridge

SENTRY = "sntrys_0123456789abcdefABCDEF"
NPM = "npm_tokenvalue_9876543210"
GHS = "ghs_" + "A1b2C3d4E5" * 3 + "f6G7h8"  # 36 characters after ghs_


def test_a_redactor_replaces_every_value_longest_first_and_leaves_short_ones():
    redact = Redactor({"SHORT": "abc1234", "TOKEN": "abcdefgh", "LONGER": "abcdefgh-and-more"})
    assert redact("x abcdefgh-and-more y abcdefgh z") == "x [secret LONGER] y [secret TOKEN] z"
    assert redact.skipped == ["SHORT"] and redact("abc1234") == "abc1234"  # under MIN_CHARS: not redacted
    assert len("abc1234") < MIN_CHARS
    assert redact.deep({"k": ["abcdefgh", 1, None], "abcdefgh": True}) == {"k": ["[secret TOKEN]", 1, None],
                                                                            "[secret TOKEN]": True}
    assert Redactor({"A": "a.b*c+d?e"})("xa.b*c+d?ex axbxcxdxe") == "x[secret A]x axbxcxdxe"  # values are literal
    many = Redactor({f"S{i}": f"value-{i:06d}-secret" for i in range(2000)})
    started = time.perf_counter()
    lines = [f"line {i} has value-{i:06d}-secret inside" for i in range(2000)] + ["nothing here " * 20] * 20000
    out = [many(line) for line in lines]
    assert out[7] == "line 7 has [secret S7] inside"
    assert time.perf_counter() - started < 5  # one compiled pattern: 22,000 lines, 2,000 values


def test_the_stored_log_transcript_and_actions_hold_no_value(conn):
    redact = Redactor({"SENTRY_TOKEN": SENTRY, "gateway token": "rly-session-XYZXYZXYZXYZ"})
    box = Outbox(conn, "session_r1", Outage("test", "redis://"))
    box.redact = redact
    box.log(f"curl -H 'Authorization: Bearer {SENTRY}' …", "routinely: plain line", f"{NPM} stays (not a secret here)")
    box.transcript([{"kind": "tool_call", "id": "1", "input": {"command": f"echo {SENTRY}"}},
                    {"kind": "tool_result", "id": "1", "output": f"{SENTRY}\nrly-session-XYZXYZXYZXYZ"}])
    assert box.flush()
    from workers.connector.record import Recorder
    from workers.connector.tools import Call

    recorder = Recorder(conn, "session_r1", lambda line: None, time.time)
    recorder.redact = redact
    call = Call(tool="add_issue_comment", owner="o", repo="r", number=1, request=None)  # type: ignore[arg-type]
    recorder(call, "ok", url=f"https://github.test/o/r/issues/1?t={SENTRY}", number=1)
    lines = session_log.read(conn, "session_r1")[0]
    assert lines[0] == "curl -H 'Authorization: Bearer [secret SENTRY_TOKEN]' …"
    assert lines[2].startswith(NPM)
    entries = transcript.read(conn, "session_r1")
    assert entries[0]["input"]["command"] == "echo [secret SENTRY_TOKEN]"
    assert entries[1]["output"] == "[secret SENTRY_TOKEN]\n[secret gateway token]"
    assert actions.of_session(conn, "session_r1")[0][0]["url"].endswith("?t=[secret SENTRY_TOKEN]")
    for key in (keys.session_log("session_r1"), keys.session_transcript("session_r1"), keys.session_actions("session_r1")):
        dumped = str(conn.xrange(key) if conn.type(key) == b"stream" else conn.lrange(key, 0, -1))
        assert SENTRY not in dumped and "XYZXYZXYZXYZ" not in dumped


def test_the_scanner_names_file_and_line_for_values_and_token_shapes():
    scanner = Scanner({"SENTRY_TOKEN": SENTRY, "TINY": "abc"})
    data = f"one\ntwo {SENTRY}\nthree\nkey = '{GHS}'\nAKIAABCDEFGHIJKLMNOP\nsk-ant-api03-{'x' * 30}\n".encode()
    found = [str(f) for f in scanner.scan(data, "conf.py")]
    assert found == ["conf.py line 2 holds secret SENTRY_TOKEN", "conf.py line 4 holds a GitHub token",
                     "conf.py line 5 holds an AWS access key id", "conf.py line 6 holds an Anthropic API key"]
    assert scanner.scan(b"abc ghs_short AKIAxyz notAKIAABCDEFGHIJKLMNOPQ", "x") == []


@pytest.fixture
def guard(tmp_path):
    remote, work = one_commit_remote(tmp_path)
    lines: list[str] = []
    sock = os.path.join(tempfile.mkdtemp(prefix="rly-t-"), "push.sock")
    g = PushGuard(tmp_path / "relays", "claude/", False, lines.append, sock=sock, secrets={"SENTRY_TOKEN": SENTRY})
    g.add("octo/api", f"file://{remote}", lambda: None)
    bridge = TcpBridge(g.sock)
    g.lines, g.remote, g.work, g.port = lines, remote, work, bridge.port  # type: ignore[attr-defined]
    yield g
    bridge.close()
    g.close()


def _commit(work: Path, path: str, text: str, message: str = "change") -> None:
    (work / path).parent.mkdir(parents=True, exist_ok=True)
    (work / path).write_text(text)
    git("add", path, cwd=work)
    git("commit", "-qm", message, cwd=work)


def _push(guard, tmp_path: Path, ref: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "push", guard.url("octo/api", guard.port), f"HEAD:{ref}"], cwd=guard.work,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})


def _remote_refs(remote: Path) -> str:
    return git("for-each-ref", "--format=%(refname)", cwd=remote)


def test_a_push_carrying_a_secret_or_a_github_token_is_refused_with_file_and_line(guard, tmp_path):
    _commit(guard.work, "src/settings.py", f"DEBUG = True\nTOKEN = '{SENTRY}'\n")
    done = _push(guard, tmp_path, "refs/heads/claude/leak")
    assert done.returncode != 0
    assert "src/settings.py line 2 holds secret SENTRY_TOKEN" in done.stderr, done.stderr
    assert SENTRY not in done.stderr and SENTRY not in "\n".join(guard.lines)
    assert "claude/leak" not in _remote_refs(guard.remote)
    assert "claude/leak" not in git("for-each-ref", cwd=guard.relays["octo__api"].path)  # not even in the relay

    git("reset", "-q", "--hard", "HEAD~1", cwd=guard.work)
    _commit(guard.work, "ci.yml", "a: 1\nb: 2\nc: 3\ntoken: " + GHS + "\n")
    done = _push(guard, tmp_path, "refs/heads/claude/ghs")
    assert done.returncode != 0 and "ci.yml line 4 holds a GitHub token" in done.stderr, done.stderr
    assert GHS not in done.stderr

    git("reset", "-q", "--hard", "HEAD~1", cwd=guard.work)
    _commit(guard.work, "notes.txt", "clean\n", message=f"uses {SENTRY}")
    done = _push(guard, tmp_path, "refs/heads/claude/message")
    assert done.returncode != 0 and "holds secret SENTRY_TOKEN" in done.stderr and "commit " in done.stderr

    # a clean push still lands, and is forwarded
    git("reset", "-q", "--hard", "HEAD~1", cwd=guard.work)
    _commit(guard.work, "ok.txt", "nothing secret\n")
    done = _push(guard, tmp_path, "refs/heads/claude/ok")
    assert done.returncode == 0, done.stderr
    assert "refs/heads/claude/ok" in _remote_refs(guard.remote)

    # a secret buried in an older commit of the pushed range is found too
    _commit(guard.work, "deep/a.txt", f"x\n{SENTRY}\n")
    _commit(guard.work, "deep/a.txt", "x\n")  # removed again on top: the commit still carries it
    done = _push(guard, tmp_path, "refs/heads/claude/ok")
    assert done.returncode != 0 and "deep/a.txt line 2 holds secret SENTRY_TOKEN" in done.stderr, done.stderr


def test_a_file_named_after_a_secret_or_a_token_is_refused_without_the_name(guard, tmp_path):
    for name in (f"n_{SENTRY}", GHS):
        git("reset", "-q", "--hard", "main", cwd=guard.work)
        _commit(guard.work, f"dir/{name}", "harmless\n")
        done = _push(guard, tmp_path, "refs/heads/claude/named")
        assert done.returncode != 0 and "a file or folder name line 1 holds" in done.stderr, done.stderr
        assert name not in done.stderr and "claude/named" not in _remote_refs(guard.remote)


def test_a_token_shape_with_more_after_it_is_still_a_token():
    scanner = Scanner({})
    assert [f.what for f in scanner.scan(f"{GHS}_x {GHS}{'A' * 250}".encode(), "x")] == ["a GitHub token"] * 2


def test_a_push_of_too_many_objects_is_refused_before_the_worker_holds_them(guard, tmp_path, monkeypatch):
    from workers import pushscan

    monkeypatch.setattr(pushscan, "MAX_SCAN_OBJECTS", 50)  # the door runs in this process: the cap under test, smaller
    for i in range(60):
        (guard.work / "many" / f"f{i}").parent.mkdir(exist_ok=True)
        (guard.work / "many" / f"f{i}").write_text(f"{i}\n")
    git("add", "many", cwd=guard.work)
    git("commit", "-qm", "many", cwd=guard.work)
    done = _push(guard, tmp_path, "refs/heads/claude/many")
    assert done.returncode != 0 and "adds more than 50 objects" in done.stderr, done.stderr


def test_a_multi_line_secret_printed_line_by_line_and_a_json_escaped_one_are_redacted():
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\nAAAAEbm9uZQAAAAAAAAABAAAAMw\n-----END OPENSSH PRIVATE KEY-----"
    quoted = 'pa"ss\\word-with-quotes'
    r = Redactor({"DEPLOY_KEY": key, "PASS": quoted})
    printed = [r(line) for line in key.split("\n")]  # the log stores a program's output line by line
    assert printed == ["-----BEGIN OPENSSH PRIVATE KEY-----", "[secret DEPLOY_KEY]", "[secret DEPLOY_KEY]",
                       "-----END OPENSSH PRIVATE KEY-----"]
    assert r(json.dumps({"command": f"login {quoted}"})) == '{"command": "login [secret PASS]"}'
