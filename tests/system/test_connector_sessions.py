"""The github connector in real sessions: a real RQ worker runs a session whose agent (a Python
script using the `mcp` SDK's client) acts through the connector; only GitHub's HTTP API is
faked, by a local server in this test process that records what reached it."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from app import create_app
from routinely.routines import catalog
from routinely.records import session_log
from routinely.firing.start import Firing, fire_one
from tests.fake_github import INSTALLATION_TOKEN
from tests.support import AGENTS_DIR, Remotes, admin, body_of, delivery_headers, fixture, needs_sandbox, run_sessions


AGENT = AGENTS_DIR / "github_agent.py"


@pytest.fixture
def world(settings, private_key, fake_github, redis_server, tmp_path):
    """Remotes, an App pointed at the fake GitHub, its installation on octo/api, and the worker's env."""
    root = tmp_path / "github"
    root.mkdir()
    remotes = Remotes(root)
    remotes.create("octo/api", branch="main", files={"app.py": "print('hi')\n"})
    app_settings = settings.with_(github_app_id="67890", github_private_key=private_key, github_api_url=fake_github.url,
                                  github_git_url=remotes.url)
    client = admin(create_app(app_settings).test_client())
    payload = fixture("installation.created.json")
    payload["installation"]["id"] = 42
    payload["repositories"] = [{"id": 1, "name": "api", "full_name": "octo/api", "private": True}]
    body = body_of(payload)
    assert client.post("/webhooks/github", data=body, headers=delivery_headers("installation", body)).status_code == 202
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
        "REDIS_URL": redis_server.url, "GITHUB_GIT_URL": remotes.url, "GITHUB_API_URL": fake_github.url,
        "GITHUB_APP_ID": "67890", "GITHUB_PRIVATE_KEY": private_key, "GITHUB_WEBHOOK_SECRET": "whsec-x",
        "ROUTINELY_DATA_DIR": str(settings.data_dir), "PUBLIC_URL": settings.public_url,
        "ROUTINELY_AGENT": f"{sys.executable} {AGENT}", "ROUTINELY_SESSION_USERS": "off",
        "ROUTINELY_SANDBOX": "off",  # the agent writes its report to the test's tmp (the sandboxed test below does not)
    }
    return {"client": client, "env": env, "remotes": remotes, "settings": app_settings}


def apply(conn, tmp_path, name="pr-review", **extra):
    spec = {"name": name, "account": "alice", "prompt": "Review this pull request; post a review and a summary.",
            "repositories": ["octo/api"], "triggers": [{"github": {"events": ["pull_request.opened"]}}, {"api": {}}],
            "github": {"writes": ["add_issue_comment", "create_pull_request_review", "create_pull_request", "update_issue"],
                       "max_writes": 4}}
    env = extra.pop("env", {})
    spec["environment"] = {"env": {"REPORT": str(tmp_path / f"{name}.json"), **env}, **extra.pop("environment", {})}
    spec.update(extra)
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "enterprise"}], "routines": [spec]}, time.time())


def opened_delivery(client) -> str:
    payload = fixture("pull_request.opened.json")
    payload["repository"]["full_name"] = "octo/api"
    payload["pull_request"]["number"] = 5
    body = body_of(payload)
    resp = client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    assert resp.status_code == 202
    return resp.get_json()["sessions"][0]["id"]


def test_a_review_routine_fired_by_a_delivery_reviews_comments_and_shows_its_actions(conn, world, fake_github, tmp_path):
    apply(conn, tmp_path, env={"PLAN": "all", "TOKEN_FILE": str(tmp_path / "token"), "OUTSIDE_URL": fake_github.url + "/zen"})
    sid = opened_delivery(world["client"])
    done = run_sessions(world["env"])

    s = world["client"].get(f"/api/sessions/{sid}").get_json()
    assert s["status"] == "succeeded", s
    assert "StreamableHTTP session manager" not in done.stderr  # the SDK's per-session chatter stays off the worker's output
    report = json.loads((tmp_path / "pr-review.json").read_text())
    assert len(report["tools"]) == 13 and "create_pull_request_review" in report["tools"]
    outcome = [(c["tool"], c["error"]) for c in report["calls"]]
    assert outcome == [("get_pull_request_files", False), ("create_pull_request_review", False), ("add_issue_comment", False),
                       ("create_pull_request", False), ("update_issue", False),
                       ("add_issue_comment", True), ("create_pull_request", True), ("create_pull_request", True),
                       ("create_pull_request_review", True), ("create_issue", True), ("add_issue_comment", True)]
    why = [c["text"] for c in report["calls"][5:]]
    assert "octo/elsewhere is not one of this routine's repositories" in why[0]
    assert "outside this routine's branch_prefix" in why[1]
    assert "was not pushed to octo/api by this session" in why[2]
    assert "APPROVE is refused" in why[3]
    assert "not in this routine's github.writes" in why[4]
    assert "made its 4 writes (github.max_writes)" in why[5]
    assert report["status"] == {"none": 401, "wrong": 401}
    assert report["outside"] == "reached"  # network full: the probe below can tell reached from not

    # what reached GitHub: exactly the allowed calls, with the installation token
    seen = fake_github.calls()
    assert [(r.method, r.path) for r in seen] == [
        ("GET", "/repos/octo/api/pulls/5/files"), ("POST", "/repos/octo/api/pulls/5/reviews"),
        ("POST", "/repos/octo/api/issues/5/comments"), ("POST", "/repos/octo/api/pulls"), ("PATCH", "/repos/octo/api/issues/7"),
        ("GET", "/zen")]  # the probe's own request, not through the connector
    assert {r.authorization for r in seen[:5]} == {f"token {INSTALLATION_TOKEN}"} and seen[5].authorization == ""
    assert seen[1].body == {"event": "COMMENT", "body": "Review: one finding",
                            "comments": [{"path": "app.py", "line": 1, "body": "Handle the error here"}]}
    assert seen[2].body == {"body": "Summary: one finding, see the review"}
    assert seen[3].body == {"title": "Fix the alert", "head": "claude/fix-1", "base": "main", "body": "From the alert", "draft": True}
    assert seen[4].body == {"labels": ["triaged", "bug"]}
    assert "refs/heads/claude/fix-1" in world["remotes"].refs("octo/api")  # pushed through the guard first

    # recorded on the session: actions, reads, log lines, and the page links what was made
    acts = s["actions"]
    assert [(a["tool"], a["status"]) for a in acts] == [
        ("create_pull_request_review", "ok"), ("add_issue_comment", "ok"), ("create_pull_request", "ok"), ("update_issue", "ok"),
        ("add_issue_comment", "refused"), ("create_pull_request", "refused"), ("create_pull_request", "refused"),
        ("create_pull_request_review", "refused"), ("create_issue", "refused"), ("add_issue_comment", "refused")]
    assert acts[0]["url"].startswith("https://github.example/octo/api/pull/5#pullrequestreview-") and acts[0]["number"] == 5
    assert acts[2]["url"] == f"https://github.example/octo/api/pull/{acts[2]['number']}"
    assert s["github_reads"] == 1
    page = world["client"].get(f"/sessions/{sid}").data.decode()
    for a in acts[:4]:
        assert f'href="{a["url"]}"' in page
    log = "\n".join(session_log.read(conn, sid)[0])
    assert "routinely: github create_pull_request_review octo/api#5: ok" in log
    assert "routinely: github create_issue octo/api: refused: create_issue is not in this routine's github.writes" in log
    assert INSTALLATION_TOKEN not in log and "Handle the error here" not in log
    token = (tmp_path / "token").read_text()
    assert token.startswith("Bearer ") and token.split()[1] not in log


@needs_sandbox
@pytest.mark.parametrize("network", ["none", "allowlist"])
def test_the_connector_works_where_the_internet_does_not(conn, world, fake_github, tmp_path, network):
    environment = {"network": network, **({"allow_hosts": ["example.invalid"]} if network == "allowlist" else {})}
    shared = tmp_path / "shared"  # read-only inside the sandbox (ROUTINELY_SANDBOX_PATHS)
    shared.mkdir()
    env = {**world["env"], "ROUTINELY_SANDBOX": "on", "ROUTINELY_KEEP_WORKSPACES": "1",
           "ROUTINELY_SANDBOX_PATHS": f"{AGENT.parent}:{shared}"}
    workspaces = Path(world["settings"].data_dir) / "workspaces"
    apply(conn, tmp_path, name="probe", environment=environment,  # the agent writes into its own workspace
          env={"PLAN": "probe", "OUTSIDE_URL": fake_github.url + "/zen", "TOKEN_FILE": "token", "REPORT": "probe.json"})
    first = fire_one(world["settings"], conn, "probe", Firing(kind="manual"))
    run_sessions(env)
    # a second session tries the first one's token, now finished
    (shared / "token").write_text(next((workspaces / first["id"]).rglob("token")).read_text())
    apply(conn, tmp_path, name="probe", environment=environment,
          env={"PLAN": "probe", "OUTSIDE_URL": fake_github.url + "/zen", "OLD_TOKEN_FILE": str(shared / "token"),
               "REPORT": "probe.json"})
    second = fire_one(world["settings"], conn, "probe", Firing(kind="manual"))
    run_sessions(env)
    for s in (first, second):
        assert world["client"].get(f"/api/sessions/{s['id']}").get_json()["status"] == "succeeded"
    report = json.loads(next((workspaces / second["id"]).rglob("probe.json")).read_text())
    assert report["calls"] == [{"tool": "get_issue", "error": False, "text": report["calls"][0]["text"]}]
    assert json.loads(report["calls"][0]["text"])["number"] == 7
    assert report["outside"] in ("ConnectError", "ConnectTimeout")  # the host's listener is out of reach
    assert report["status"] == {"none": 401, "wrong": 401, "finished_session": 401}
    assert [(r.method, r.path) for r in fake_github.calls()] == [("GET", "/repos/octo/api/issues/7")] * 2
