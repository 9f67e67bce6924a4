"""`/command` triggers: parsing a comment's first word, routing on it, validating it when applied."""
from __future__ import annotations

import pytest

from filters import parse_command
from routinely.routines.catalog import Catalog
from routinely.routine_file import ApplyError, parse_config
from tests.support import fixture


@pytest.mark.parametrize("body,expected", [
    ("/fix", ("fix", "")),
    ("/fix the login page", ("fix", "the login page")),
    ("/fix   the login page  ", ("fix", "the login page")),
    ("   /fix leading spaces are fine", ("fix", "leading spaces are fine")),
    ("\t/fix a tab too", ("fix", "a tab too")),
    ("/fix\nthe second line is not the text", ("fix", "")),
    ("/fix first line\r\nsecond line", ("fix", "first line")),
    ("/fix the login\n\n```\n/deploy prod\n```", ("fix", "the login")),
    ("/fixed", ("fixed", "")),  # a different word: /fixed is not /fix
    ("/fix-it now", ("fix-it", "now")),
    ("please /fix this", None),  # other text first
    ("> /fix quoted", None),
    ("```\n/fix\n```", None),  # inside a code block
    ("`/fix`", None),
    ("/fix/more", None),
    ("/", None),
    ("", None),
    ("\n/fix after a blank line", None),
])
def test_parse(body, expected):
    assert parse_command(body) == expected


def catalog_of(*triggers, repos=("Codertocat/Hello-World",)) -> Catalog:
    config = parse_config({"accounts": [{"name": "a"}], "routines": [
        {"name": f"r{i}", "account": "a", "prompt": "p", "repositories": list(repos), "triggers": [trig]}
        for i, trig in enumerate(triggers)]}, None)
    return Catalog(config, 1)


def routed(cat: Catalog, event: str, payload: dict) -> list[str]:
    kind, _, action = event.partition(".")
    return [r.name for r in cat.route(kind, action or None, payload["repository"]["full_name"], payload)]


def comment(body: str, name="issue_comment.created.json") -> dict:
    payload = fixture(name)
    payload["comment"]["body"] = body
    return payload


def test_a_command_trigger_fires_only_on_its_word():
    cat = catalog_of({"github": {"command": "fix"}}, {"github": {"command": "deploy"}},
                     {"github": {"events": ["issue_comment.created"]}})
    assert routed(cat, "issue_comment.created", comment("/fix the login")) == ["r0", "r2"]
    assert routed(cat, "issue_comment.created", comment("  /deploy staging")) == ["r1", "r2"]
    assert routed(cat, "issue_comment.created", comment("/fixed it")) == ["r2"]
    assert routed(cat, "issue_comment.created", comment("I will /fix it")) == ["r2"]
    assert routed(cat, "issue_comment.created", comment("```\n/fix\n```")) == ["r2"]
    # a PR review comment fires it too (the default events of a command trigger)
    assert routed(cat, "pull_request_review_comment.created",
                  comment("/fix this line", "pull_request_review_comment.created.json")) == ["r0"]


def test_a_command_trigger_and_filters_both_hold():
    cat = catalog_of({"github": {"command": "fix", "events": ["issue_comment.created"],
                                 "filters": [{"field": "on_pull_request", "op": "equals", "value": False}]}})
    assert routed(cat, "issue_comment.created", comment("/fix")) == ["r0"]
    on_pr = comment("/fix")
    on_pr["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"}
    assert routed(cat, "issue_comment.created", on_pr) == []


@pytest.mark.parametrize("github,message", [
    ({"command": "fix", "events": ["issue_comment.edited"]}, "command fires on issue_comment.created and"),
    ({"command": "fix", "events": ["issues.opened"]}, "not on 'issues.opened'"),
    ({"command": "fix me"}, "command takes a word"),
    ({"command": 3}, "command takes a word"),
    ({"command": "fix", "roles": ["owner"]}, "roles takes a non-empty list of admin, maintain, write, triage, read"),
    ({"command": "fix", "roles": []}, "roles takes a non-empty list"),
    ({"events": ["issues.opened"], "roles": "write"}, "roles takes a non-empty list"),
    ({"events": ["push.opened"]}, "'opened' is not a push action"),
])
def test_bad_command_and_roles_are_refused_when_applied(github, message):
    with pytest.raises(ApplyError, match=message):
        catalog_of({"github": github})


def test_command_and_roles_are_stored_normalized():
    cat = catalog_of({"github": {"command": "/fix", "roles": ["write", "admin", "write"]}})
    trig = cat.routines["a/r0"].github[0]
    assert trig.command == "fix" and trig.roles == {"write", "admin"}
    assert trig.events == ("issue_comment.created", "pull_request_review_comment.created")
    assert cat.routines["a/r0"].triggers[0].github.roles == ("write", "admin")
    assert cat.routines["a/r0"].to_file()["triggers"][0]["github"]["roles"] == ["write", "admin"]
