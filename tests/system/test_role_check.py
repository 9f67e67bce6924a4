"""The role check off the request path (issue #29): the web answers GitHub without asking
GitHub; a real RQ worker asks (cache off, a real deadline) before any sandbox exists.

GitHub is a local HTTP server (tests/fake_github.py) whose role answers can be held: the
tests follow what it saw and when, never a wall-clock bound on the answer.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app import create_app
from routinely.storage import keys
from routinely.records import session_log, sessions
from routinely.firing.roles import RoleError, Roles
from tests.fake_github import FakeGitHub
from tests.support import (worker_command, AGENTS_DIR, FIX_ROUTINE, OCTO_REPO, Remotes, admin, apply_octo_routines, comment_by,
                           fixture, post_delivery, wait_for)

AGENT = AGENTS_DIR / "report.py"
PERMISSION = re.compile(r"/repos/[^/]+/[^/]+/collaborators/([^/]+)/permission")


class SlowGitHub(FakeGitHub):
    """The fake GitHub, answering each user's role; while `holding`, a role request waits for
    `release` (at most `hold_seconds`) before it is answered, as a slow GitHub would."""

    def __init__(self, roles: dict[str, str], hold_seconds: float = 5.0) -> None:
        super().__init__()
        self.roles, self.hold_seconds = roles, hold_seconds
        self.holding = False
        self.held = threading.Event()  # a role request arrived and is being held
        self.release = threading.Event()
        self.answered: list[str] = []  # the users whose role was answered, in order

    def asked(self) -> list[str]:
        return [m.group(1) for r in self.requests if r.method == "GET" and (m := PERMISSION.fullmatch(r.path))]

    def answer(self, r):
        m = PERMISSION.fullmatch(r.path)
        if r.method != "GET" or not m:
            return super().answer(r)
        if self.holding:
            self.held.set()
            self.release.wait(self.hold_seconds)
        user = m.group(1)
        self.answered.append(user)
        js = "application/json; charset=utf-8"
        if user not in self.roles:
            return 404, {"message": "Not Found"}, js
        return 200, {"permission": self.roles[user], "role_name": self.roles[user], "user": {"login": user}}, js


@pytest.fixture
def github():
    server = SlowGitHub({"maint": "maintain", "stranger": "read"})
    yield server
    server.release.set()
    server.close()


@pytest.fixture
def world(settings, private_key, github, redis_server, tmp_path):
    root = tmp_path / "remotes"
    root.mkdir()
    Remotes(root).create(OCTO_REPO)
    app_settings = settings.with_(github_app_id="13579", github_private_key=private_key, github_api_url=github.url,
                                  github_git_url=Remotes(root).url)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "REDIS_URL": redis_server.url, "GITHUB_GIT_URL": Remotes(root).url, "GITHUB_API_URL": github.url,
           "GITHUB_APP_ID": "13579", "GITHUB_PRIVATE_KEY": private_key,
           "ROUTINELY_DATA_DIR": str(settings.data_dir), "ROUTINELY_AGENT": f"{sys.executable} {AGENT}",
           "ROUTINELY_SESSION_USERS": "off", "ROUTINELY_SANDBOX": "off"}  # the agent reports outside its workspace
    client = admin(create_app(app_settings).test_client())
    installed = fixture("installation.created.json")
    installed["installation"]["id"] = 1
    installed["repositories"] = [{"id": 1, "name": "api", "full_name": OCTO_REPO, "private": True}]
    assert post_delivery(client, "installation", installed).status_code == 202  # the checkout's token comes from it
    return {"client": client, "env": env, "settings": app_settings}


def worker(env) -> subprocess.Popen:
    return subprocess.Popen(worker_command(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err


def fix_with_report(conn, tmp_path) -> Path:
    report = tmp_path / "report.json"
    apply_octo_routines(conn, {**FIX_ROUTINE, "environment": {"env": {"REPORT": str(report)}}})
    return report


def test_the_202_never_waits_on_github_and_a_stranger_costs_no_sandbox(conn, world, github, tmp_path):
    report = fix_with_report(conn, tmp_path)
    client = world["client"]
    github.holding = True
    resp = post_delivery(client, "issue_comment", comment_by("maint", "/fix the login page"))
    assert resp.status_code == 202
    maint = resp.get_json()["sessions"][0]["id"]
    assert github.asked() == []  # answered before GitHub was asked anything
    assert json.loads(sessions.get_raw(conn, maint)[b"role_check"]) == {
        "roles": ["admin", "maintain", "write"], "actor": "maint", "repository": OCTO_REPO, "installation": 1}

    proc = worker(world["env"])
    try:
        assert wait_for(github.held.is_set, timeout=60)  # the worker asked, and GitHub holds the answer
        strangers = []
        for _ in range(3):  # deliveries meanwhile are answered while GitHub still holds
            resp = post_delivery(client, "issue_comment", comment_by("stranger", "/fix it"))
            assert resp.status_code == 202 and github.answered == [] and not github.release.is_set()
            strangers.append(resp.get_json()["sessions"][0]["id"])
        assert github.asked() == ["maint"]
    finally:
        github.holding = False
        github.release.set()
    finished(proc)

    s = world["client"].get(f"/api/sessions/{maint}").get_json()
    assert s["status"] == "succeeded", session_log.read(conn, maint)[0]
    assert json.loads(report.read_text())["env"]["ROUTINELY_SESSION_ID"] == maint  # the agent ran for maint alone
    assert github.asked() == ["maint", "stranger"]  # the burst of three asked once
    detail = "stranger has role read on octo/api; the trigger wants admin, maintain, write"
    for sid in strangers:
        raw = sessions.get_raw(conn, sid)
        assert raw[b"status"] == b"canceled" and b"sandbox" not in raw  # ended before its sandbox was opened
        assert raw[b"reason"].decode() == f"routinely: dropped (role): {detail}"
        assert not (world["settings"].data_dir / "workspaces" / sid).exists()
    assert conn.hget(keys.drops("alice/fix"), "role") == b"3"
    stranger_events = [e for e in world["client"].get("/api/events").get_json() if e["dropped"]]
    assert len(stranger_events) == 3
    assert all(e["dropped"] == [{"routine": "fix", "reason": "role", "detail": detail, "retry_after": 0}]
               for e in stranger_events)
    explained = subprocess.run([sys.executable, "-m", "cli", "explain", stranger_events[0]["id"]], env=world["env"],
                               capture_output=True, text=True, timeout=60)
    assert explained.returncode == 0, explained.stderr
    assert "matched, but fix was dropped (role)" in explained.stdout
    assert f"matched, then dropped: role ({detail})" in explained.stdout
    assert f"dropped fix: role: {detail}" in world["client"].get("/events").get_data(as_text=True)


def test_a_github_that_does_not_answer_within_the_deadline_fails_closed_and_a_replay_asks_again(
        conn, world, github, tmp_path):
    report = fix_with_report(conn, tmp_path)
    client = world["client"]
    github.holding, github.hold_seconds = True, 60.0  # far past the worker's deadline
    resp = post_delivery(client, "issue_comment", comment_by("maint", "/fix the login page"))
    assert resp.status_code == 202
    sid, event_id = resp.get_json()["sessions"][0]["id"], client.get("/api/events").get_json()[0]["id"]
    finished(worker(world["env"]))
    assert github.asked() == ["maint"] and github.answered == []  # the worker gave up while GitHub still held
    raw = sessions.get_raw(conn, sid)
    assert raw[b"status"] == b"failed" and b"sandbox" not in raw and not report.exists()
    why = "GitHub did not say maint's role on octo/api within 5 s (timeout); the session did not run: replay the event to ask again"
    assert raw[b"reason"].decode() == f"routinely: dropped (role): {why}"
    event = client.get(f"/api/events/{event_id}").get_json()
    assert event["sessions"] == [] and event["dropped"] == [{"routine": "fix", "reason": "role", "detail": why,
                                                             "retry_after": 0}]
    assert not conn.exists(keys.role(OCTO_REPO, "maint"))  # no answer is not cached

    github.holding = False
    github.release.set()
    replayed = client.post(f"/api/events/{event_id}/replay", json={})
    assert replayed.status_code == 201, replayed.get_data(as_text=True)
    again = replayed.get_json()["sessions"][0]["id"]
    assert b"role_check" in sessions.get_raw(conn, again)
    finished(worker(world["env"]))
    assert client.get(f"/api/sessions/{again}").get_json()["status"] == "succeeded"
    assert json.loads(report.read_text())["env"]["ROUTINELY_SESSION_ID"] == again


def test_the_look_up_holds_its_deadline_with_githubs_cache_off(conn, world, github):
    """githubkit's HTTP cache ignores the timeout: with it off, the deadline holds."""
    roles = Roles(world["settings"], deadline=1.0)
    # first a look-up GitHub answers at once: the installation token is minted and kept, so
    # the deadline below covers the role request alone (on a busy machine, not the mint too)
    assert roles.role(conn, OCTO_REPO, "ghost", installation=1) == "none"  # 404: no collaborator
    assert conn.get(keys.role(OCTO_REPO, "ghost")) == b"none" and 0 < conn.ttl(keys.role(OCTO_REPO, "ghost")) <= keys.ROLE_TTL
    github.holding = True  # holds up to 5 s
    with pytest.raises(RoleError, match=r"^GitHub did not say maint's role on octo/api within 1 s \(timeout\)$"):
        roles.role(conn, OCTO_REPO, "maint", installation=1)
    assert github.held.is_set() and github.answered == ["ghost"]  # given up while GitHub still held the answer
    github.release.set()
    assert wait_for(lambda: github.answered == ["ghost", "maint"])
    github.holding = False
    assert roles.role(conn, OCTO_REPO, "maint", installation=1) == "maintain"
