"""The github connector on its own: a real MCP server on a unix socket, the real `mcp` client,
real Redis; only GitHub's HTTP API is faked (a local server that records what reached it: the
fake_github fixture, tests/conftest.py)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from routinely.records import actions, session_log
from routinely.storage import keys
from routinely.github.github_auth import InstallationTokens
from routinely.routine_file import ApplyError, GithubPolicy, parse_config
from tests.fake_github import INSTALLATION_TOKEN
from tests.support import ConnectorSession, connector_routine, needs_sandbox, run_in_sandbox, tool_text
from workers.connector import Connector, Policy
from workers.sandbox import Sandbox


WRITES = ["add_issue_comment", "create_pull_request_review", "create_pull_request", "create_issue", "update_issue"]


def test_tools_are_listed_with_the_reference_names_and_arguments(conn, fake_github_settings, installed):
    s = ConnectorSession(conn, fake_github_settings)
    try:
        tools = {t.name: t for t in s.tools()}
    finally:
        s.close()
    assert set(tools) == {"get_pull_request", "get_pull_request_files", "get_pull_request_diff", "list_pull_requests",
                          "get_issue", "list_issues", "list_commits", "get_file_contents", *WRITES}
    props = lambda name: tools[name].input_schema["properties"]  # noqa: E731
    assert {"owner", "repo", "pull_number"} <= set(tools["get_pull_request"].input_schema["required"])
    assert {"state", "labels", "since"} <= set(props("list_issues"))
    assert {"body", "event", "comments"} <= set(props("create_pull_request_review"))
    assert {"title", "body", "state", "labels", "assignees"} <= set(props("update_issue"))
    assert tools["get_issue"].annotations.read_only_hint and not tools["add_issue_comment"].annotations.read_only_hint


def test_calls_reach_github_with_the_installation_token_and_are_recorded(conn, fake_github_settings, installed, fake_github):
    s = ConnectorSession(conn, fake_github_settings, pushed={("octo/api", "claude/fix")})
    try:
        results = s.call(
            ("get_pull_request", {"owner": "octo", "repo": "api", "pull_number": 5}),
            ("get_pull_request_diff", {"owner": "octo", "repo": "api", "pull_number": 5}),
            ("list_issues", {"owner": "octo", "repo": "api", "state": "OPEN", "labels": ["bug", "p1"], "since": "2026-11-30T09:00:00Z"}),
            ("get_file_contents", {"owner": "octo", "repo": "api", "path": "src/app.py", "ref": "main"}),
            ("add_issue_comment", {"owner": "octo", "repo": "api", "issue_number": 5, "body": "Summary: looks fine"}),
            ("create_pull_request_review", {"owner": "octo", "repo": "api", "pull_number": 5, "body": "Two nits",
                                            "event": "COMMENT", "comments": [{"path": "app.py", "line": 1, "body": "nit"}]}),
            ("create_pull_request", {"owner": "octo", "repo": "api", "title": "Fix", "head": "claude/fix", "base": "main", "draft": False}),
            ("update_issue", {"owner": "Octo", "repo": "API", "issue_number": 7, "labels": ["triaged"], "assignees": ["mona"]}),
        )
    finally:
        s.close()
    assert [r.is_error for r in results] == [False] * 8, [tool_text(r) for r in results]
    assert json.loads(tool_text(results[0]))["number"] == 5
    assert tool_text(results[1]).startswith("diff --git")
    assert tool_text(results[3]) == "print('hello')\n"
    assert json.loads(tool_text(results[6]))["draft"] is True  # draft_prs defaults to true, whatever the agent asked
    seen = fake_github.calls()
    assert [(r.method, r.path) for r in seen] == [
        ("GET", "/repos/octo/api/pulls/5"), ("GET", "/repos/octo/api/pulls/5"), ("GET", "/repos/octo/api/issues"),
        ("GET", "/repos/octo/api/contents/src/app.py"), ("POST", "/repos/octo/api/issues/5/comments"),
        ("POST", "/repos/octo/api/pulls/5/reviews"), ("POST", "/repos/octo/api/pulls"), ("PATCH", "/repos/octo/api/issues/7")]
    assert {r.authorization for r in seen} == {f"token {INSTALLATION_TOKEN}"}
    assert "diff" in seen[1].accept
    assert seen[2].query == {"state": ["open"], "labels": ["bug,p1"], "since": ["2026-11-30T09:00:00Z"]}
    assert seen[3].query == {"ref": ["main"]}
    assert seen[4].body == {"body": "Summary: looks fine"}
    assert seen[5].body == {"event": "COMMENT", "body": "Two nits", "comments": [{"path": "app.py", "line": 1, "body": "nit"}]}
    assert seen[6].body == {"title": "Fix", "head": "claude/fix", "base": "main", "draft": True}
    assert seen[7].body == {"labels": ["triaged"], "assignees": ["mona"]}
    recorded, reads = actions.of_session(conn, "sess_a")
    assert reads == 4
    pr_number = json.loads(tool_text(results[6]))["number"]
    assert [(a["tool"], a["number"], a["status"]) for a in recorded] == [
        ("add_issue_comment", 5, "ok"), ("create_pull_request_review", 5, "ok"), ("create_pull_request", pr_number, "ok"),
        ("update_issue", 7, "ok")]
    assert recorded[0]["url"].startswith("https://github.example/octo/api/issues/5#issuecomment-")
    assert recorded[2]["url"] == f"https://github.example/octo/api/pull/{recorded[2]['number']}"
    assert all(a["repo"] == "octo/api" and a["at"].endswith("Z") for a in recorded)  # the routine's spelling
    log = "\n".join(session_log.read(conn, "sess_a")[0])
    assert "routinely: github add_issue_comment octo/api#5: ok" in log
    assert "Summary: looks fine" not in log and INSTALLATION_TOKEN not in log and "nit" not in log
    assert INSTALLATION_TOKEN not in json.dumps(recorded)


REFUSED = [
    ("add_issue_comment", {"owner": "octo", "repo": "elsewhere", "issue_number": 1, "body": "x"}, "is not one of this routine's repositories"),
    ("get_issue", {"owner": "evil", "repo": "api", "issue_number": 1}, "is not one of this routine's repositories"),
    ("create_pull_request", {"owner": "octo", "repo": "api", "title": "t", "head": "main", "base": "trunk"}, "outside this routine's branch_prefix"),
    ("create_pull_request", {"owner": "octo", "repo": "api", "title": "t", "head": "claude/never-pushed", "base": "main"}, "was not pushed to octo/api by this session"),
    ("create_pull_request", {"owner": "octo", "repo": "api", "title": "t", "head": "fork:claude/fix", "base": "main"}, "another owner's repository"),
    ("create_pull_request_review", {"owner": "octo", "repo": "api", "pull_number": 5, "event": "APPROVE"}, "APPROVE is refused"),
    ("create_issue", {"owner": "octo", "repo": "api", "title": "t"}, "is not in this routine's github.writes"),
]


def test_refused_calls_never_reach_github(conn, fake_github_settings, installed, fake_github):
    s = ConnectorSession(conn, fake_github_settings, pushed={("octo/api", "claude/fix")},
                writes=["add_issue_comment", "create_pull_request_review", "create_pull_request"], max_writes=2)
    try:
        results = s.call(*[(name, args) for name, args, _ in REFUSED])
        # two writes allowed; the third is past max_writes
        capped = s.call(*[("add_issue_comment", {"owner": "octo", "repo": "api", "issue_number": 5, "body": f"c{i}"}) for i in range(3)])
    finally:
        s.close()
    for result, (_, _, why) in zip(results, REFUSED):
        assert result.is_error and why in tool_text(result) and "\n" not in tool_text(result), tool_text(result)
    assert [r.is_error for r in capped] == [False, False, True]
    assert "made its 2 writes (github.max_writes)" in tool_text(capped[2])
    assert [(r.method, r.path, r.body) for r in fake_github.calls()] == [
        ("POST", "/repos/octo/api/issues/5/comments", {"body": "c0"}), ("POST", "/repos/octo/api/issues/5/comments", {"body": "c1"})]
    recorded, reads = actions.of_session(conn, "sess_a")
    assert reads == 0
    assert [a["status"] for a in recorded] == ["refused"] * 6 + ["ok", "ok", "refused"]
    assert all(a["url"] is None for a in recorded if a["status"] == "refused")


def test_bearer_token_own_session_only(conn, fake_github_settings, installed, fake_github):
    a = ConnectorSession(conn, fake_github_settings, sid="sess_a")
    b = ConnectorSession(conn, fake_github_settings, sid="sess_b")
    try:
        assert a.status(None) == 401
        assert a.status("nope") == 401
        assert a.status(b.connector.token) == 401
        assert a.status(a.connector.token[:-1]) == 401
        assert a.status(a.connector.token) != 401
        with pytest.raises(Exception):
            b.call(("add_issue_comment", {"owner": "octo", "repo": "api", "issue_number": 5, "body": "x"}), token=a.connector.token)
        b.connector.finished = True  # what close() does first: a finished session's token is refused
        assert b.status(b.connector.token) == 401
    finally:
        a.close()
        b.close()
    assert fake_github.calls() == [] and actions.of_session(conn, "sess_b") == ([], 0)
    assert not Path(a.sock).exists()


def test_without_an_app_every_tool_says_so(conn, settings, fake_github):
    s = ConnectorSession(conn, settings.with_(github_api_url=fake_github.url))
    try:
        results = s.call(("get_issue", {"owner": "octo", "repo": "api", "issue_number": 1}),
                         ("add_issue_comment", {"owner": "octo", "repo": "api", "issue_number": 1, "body": "x"}))
        assert len(s.tools()) == 13
    finally:
        s.close()
    assert all(r.is_error and "the GitHub App is not configured" in tool_text(r) for r in results)
    assert fake_github.requests == []


@pytest.mark.parametrize("status,words", [(403, "lacks the issues: write permission"), (404, "answered 404"),
                                          (401, "rejected the App's installation token")])
def test_github_refusals_name_the_missing_permission(conn, fake_github_settings, installed, fake_github, status, words):
    fake_github.fail[("POST", "/repos/octo/api/issues/5/comments")] = status
    s = ConnectorSession(conn, fake_github_settings)
    try:
        (result,) = s.call(("add_issue_comment", {"owner": "octo", "repo": "api", "issue_number": 5, "body": "x"}))
    finally:
        s.close()
    assert result.is_error and words in tool_text(result) and INSTALLATION_TOKEN not in tool_text(result)
    recorded, _ = actions.of_session(conn, "sess_a")
    assert [a["status"] for a in recorded] == ["failed"]


def test_a_repository_without_installation_fails_in_one_line(conn, fake_github_settings, fake_github):
    s = ConnectorSession(conn, fake_github_settings)
    try:
        (result,) = s.call(("get_issue", {"owner": "octo", "repo": "api", "issue_number": 1}))
    finally:
        s.close()
    assert result.is_error and "no installation of the GitHub App covers octo/api" in tool_text(result)
    assert fake_github.requests == []


def test_path_traversal_is_refused(conn, fake_github_settings, installed, fake_github):
    s = ConnectorSession(conn, fake_github_settings)
    try:
        (result,) = s.call(("get_file_contents", {"owner": "octo", "repo": "api", "path": "../../sdk/contents/x"}))
    finally:
        s.close()
    assert result.is_error and fake_github.calls() == []


def test_the_policy_block_is_validated_when_applied():
    assert GithubPolicy().to_file() == {"writes": WRITES, "max_writes": 20, "draft_prs": True, "allow_approve": False}
    for bad, words in [({"writes": ["merge_pull_request"]}, "routine 'r' \\(account a\\): github.writes: .* not write tools"),
                       ({"max_writes": -1}, "github.max_writes"), ({"draft_prs": "yes"}, "github.draft_prs"),
                       ({"approve": True}, "routine 'r' \\(account a\\), github: unknown key"), ([], "github takes")]:
        with pytest.raises(ApplyError, match=words):
            parse_config({"accounts": [{"name": "a"}], "routines": [
                {"name": "r", "account": "a", "prompt": "p", "triggers": [{"api": {}}], "github": bad}]}, None)


def test_the_prompt_paragraph_follows_the_policy():
    text_ = Policy.of(connector_routine()).prompt(True)
    assert "octo/api, octo/sdk" in text_ and "under `claude/`" in text_ and "draft" in text_ and "never APPROVE" in text_
    narrow = Policy.of(connector_routine(writes=["add_issue_comment"], max_writes=3)).prompt(True)
    assert "add_issue_comment, at most 3 writes" in narrow and "pull request must" not in narrow
    assert "may not write" in Policy.of(connector_routine(writes=[])).prompt(True)
    assert "no GitHub App is configured" in Policy.of(connector_routine()).prompt(False)


def test_a_routine_file_with_a_github_block_applies_and_its_errors_name_the_routine(conn):
    from routinely.routines import catalog

    base = {"accounts": [{"name": "a"}], "routines": [{"name": "r", "account": "a", "prompt": "p", "repositories": ["octo/api"],
                                                        "triggers": [{"api": {}}]}]}
    stored = parse_config(base, None).routines[0]
    assert stored.github_policy == GithubPolicy()
    base["routines"][0]["github"] = {"writes": ["add_issue_comment"], "allow_approve": True}
    assert parse_config(base, None).routines[0].to_file()["github"] == {"writes": ["add_issue_comment"], "max_writes": 20,
                                                                        "draft_prs": True, "allow_approve": True}
    base["routines"][0]["github"] = {"max_writes": 1001}
    with pytest.raises(ApplyError, match=r"routine 'r' \(account a\): github.max_writes takes a whole number from 0 to 1000"):
        catalog.apply(conn, base, None)
    assert conn.get(keys.ROUTINES) is None  # nothing stored
    del base["routines"][0]["github"]
    base["connectors"] = {"github": {"type": "http", "url": "https://example.test/mcp"}}
    with pytest.raises(ApplyError, match="github is the built-in connector"):
        catalog.apply(conn, base, None)
    assert conn.get(keys.ROUTINES) is None


CLAUDE = shutil.which("claude")


@needs_sandbox
@pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (npm install -g @anthropic-ai/claude-code)")
def test_claude_codes_own_mcp_client_connects_through_the_door(conn, fake_github_settings, installed, tmp_path):
    """The client agents really use, in a session with network none: connected with the
    session's token, refused (401) with another."""
    box = Sandbox.open({"network": "none", "allow_hosts": []}, "sess_cc", False, lambda line: None)
    connector = Connector("sess_cc", Policy.of(connector_routine()), str(box.door_dir / "github.sock"), conn,
                          fake_github_settings, InstallationTokens(fake_github_settings), lambda repo, branch: False,
                          lambda line: None).start()
    try:
        port = box.add_door("github", connector.socket_path)
        project, home = tmp_path / "project", tmp_path / "home"
        project.mkdir()
        home.mkdir()
        # Claude Code asks before using a project's .mcp.json; this is that answer, given ahead
        (home / ".claude.json").write_text(json.dumps({"projects": {str(project): {
            "enabledMcpjsonServers": ["github"], "hasTrustDialogAccepted": True}}}))
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        said = {}
        for name, entry in (("own", connector.mcp_entry(port)),
                            ("other", {**connector.mcp_entry(port), "headers": {"Authorization": "Bearer someone-elses"}})):
            (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"github": entry}}))
            box.share(project, writable=True)
            box.share(home, writable=True)
            done = run_in_sandbox(box, [CLAUDE, "mcp", "list"], env, project, home)
            said[name] = done.stdout + done.stderr
    finally:
        connector.close()
        box.close()
    assert "github: http://127.0.0.1:" in said["own"] and "Connected" in said["own"] and "Failed" not in said["own"], said
    assert "401" in said["other"] and "Connected" not in said["other"].replace("Failed to connect", ""), said


def test_a_connector_that_cannot_listen_says_so_in_one_line(conn, fake_github_settings, tmp_path):
    from workers.connector import ConnectorError

    connector = Connector("sess_x", Policy.of(connector_routine()), str(tmp_path / "no-such-dir" / "github.sock"), conn,
                          fake_github_settings, InstallationTokens(fake_github_settings), lambda repo, branch: False,
                          lambda line: None)
    with pytest.raises(ConnectorError, match="could not listen on"):
        connector.start()
    assert not connector._thread.is_alive()


def test_max_writes_holds_for_concurrent_calls(conn, fake_github_settings, installed, fake_github):
    s = ConnectorSession(conn, fake_github_settings, max_writes=3)
    try:
        results = s.concurrently("add_issue_comment", [{"owner": "octo", "repo": "api", "issue_number": 5, "body": f"c{i}"}
                                                       for i in range(10)])
    finally:
        s.close()
    assert sum(not r.is_error for r in results) == 3
    assert len(fake_github.calls()) == 3
    assert [a["status"] for a in actions.of_session(conn, "sess_a")[0]].count("ok") == 3
