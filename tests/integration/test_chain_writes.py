"""Chains are recorded where the App writes: the github connector after each write, the push
guard after each forwarded ref; the webhooks those writes cause then start sessions one deeper."""
from __future__ import annotations

import json

from routinely.firing import chain
from routinely.storage import keys
from tests.support import ConnectorSession, fixture, tool_text


BOT = {"login": "routinely[bot]", "type": "Bot"}


def test_the_connectors_writes_record_the_session_and_its_depth(conn, fake_github_settings, installed, fake_github):
    conn.hset(keys.session("sess_a"), mapping={"id": "sess_a", "chain_depth": "2"})
    s = ConnectorSession(conn, fake_github_settings)
    try:
        results = s.call(
            ("get_issue", {"owner": "octo", "repo": "api", "issue_number": 9}),  # a read records nothing
            ("add_issue_comment", {"owner": "octo", "repo": "api", "issue_number": 5, "body": "Triaged"}),
            ("create_pull_request", {"owner": "octo", "repo": "api", "title": "t", "head": "main", "base": "main"}),
        )
    finally:
        s.close()
    assert not results[1].is_error and results[2].is_error  # head outside branch_prefix: refused, GitHub not called
    assert conn.get(keys.chain("octo/api", "5")) == b"2 sess_a"
    assert not conn.exists(keys.chain("octo/api", "9"))
    assert list(conn.scan_iter(keys.chain("octo/api", "*"))) == [keys.chain("octo/api", "5").encode()]
    comment = fixture("issue_comment.created.json")
    comment["repository"]["full_name"] = "octo/api"
    comment["issue"]["number"] = 5
    comment["sender"] = BOT
    assert chain.depth_of(conn, "octo/api", comment) == (3, "sess_a")  # the comment's webhook: one deeper


def test_a_session_without_depth_on_record_is_a_root(conn, fake_github_settings, installed, fake_github):
    s = ConnectorSession(conn, fake_github_settings, sid="sess_b")
    try:
        (result,) = s.call(("update_issue", {"owner": "octo", "repo": "api", "issue_number": 7, "labels": ["triaged"]}))
    finally:
        s.close()
    assert not result.is_error, tool_text(result)
    assert conn.get(keys.chain("octo/api", "7")) == b"1 sess_b"
    assert json.loads(tool_text(result))  # GitHub's answer reached the agent
