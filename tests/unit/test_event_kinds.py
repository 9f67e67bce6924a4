"""The new event kinds on real payloads (@octokit/webhooks-examples): every field as the
contract reads it, every operator with and without negate and ignore_case, and
author_association on every kind."""
from __future__ import annotations

import pytest

from filters import FIELDS, Fields, FilterError, compile_filter, extract_fields
from filters.fields import BOOL, LIST
from tests.support import fixture

OPERATORS = ["equals", "contains", "starts_with", "is_one_of", "is_not_one_of", "matches_regex"]


def holds(kind: str, payload: dict, **spec) -> bool:
    return compile_filter(spec, [kind]).matches(extract_fields(kind, payload))


def test_issue_fields():
    assert extract_fields("issues", fixture("issues.opened.json")) == {
        "author": "Codertocat",
        "title": "Spelling error in the README file",
        "body": "It looks like you accidently spelled 'commit' with two 't's.",
        "labels": ["bug"],
        "assignees": ["Codertocat"],
        "state": "open",
        "author_association": "OWNER",
    }
    assert extract_fields("issues", fixture("issues.opened.null-body.json"))["body"] == ""  # null reads as ""


def test_issue_comment_fields_and_on_pull_request():
    payload = fixture("issue_comment.created.json")
    assert extract_fields("issue_comment", payload) == {
        "author": "Codertocat",
        "body": "You are totally right! I'll get this fixed right away.",
        "on_pull_request": False,
        "author_association": "OWNER",
    }
    # GitHub marks a comment on a pull request by issue.pull_request (the examples have none on a PR)
    payload["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"}
    assert holds("issue_comment", payload, field="on_pull_request", op="equals", value=True)
    assert not holds("issue_comment", payload, field="on_pull_request", op="equals", value=False)


def test_review_and_review_comment_fields():
    assert extract_fields("pull_request_review", fixture("pull_request_review.submitted.json")) == {
        "author": "Codertocat", "body": "", "state": "commented", "author_association": "OWNER"}  # body null
    assert extract_fields("pull_request_review", fixture("pull_request_review.dismissed.json"))["state"] == "dismissed"
    assert extract_fields("pull_request_review_comment", fixture("pull_request_review_comment.created.json")) == {
        "author": "Codertocat", "body": "Maybe you should use more emoji on this line.", "author_association": "OWNER"}


def test_workflow_run_fields():
    assert extract_fields("workflow_run", fixture("workflow_run.completed.json")) == {
        "name": "", "conclusion": "success", "head_branch": "master", "event": "repository_dispatch",
        "author_association": ""}
    dispatch = extract_fields("workflow_run", fixture("workflow_run.completed.dispatch.json"))
    assert dispatch["name"] == "Manually triggered workflow" and dispatch["conclusion"] == ""  # null reads as ""


def test_push_fields_and_changed_files():
    assert extract_fields("push", fixture("push.branch.json")) == {
        "ref": "refs/heads/master", "pusher": "Codertocat", "files": ["README.md"], "author_association": ""}
    assert extract_fields("push", fixture("push.json"))["files"] == []  # a tag push has no commits
    payload = fixture("push.branch.json")
    payload["commits"].append({**payload["commits"][0], "added": ["src/a.py"], "modified": ["README.md"],
                               "removed": ["docs/old.md"]})
    assert extract_fields("push", payload)["files"] == ["README.md", "src/a.py", "docs/old.md"]  # each once
    assert holds("push", payload, field="files", op="starts_with", value="src/")
    assert holds("push", payload, field="files", op="matches_regex", value=r"docs/.*\.md")
    assert not holds("push", payload, field="files", op="starts_with", value="lib/")
    assert holds("push", payload, field="files", op="starts_with", value="lib/", negate=True)  # none of them


def test_author_association_on_every_kind():
    for kind in FIELDS:
        assert FIELDS[kind]["author_association"][0] == "string"
    assert holds("issues", fixture("issues.opened.json"), field="author_association", op="is_one_of",
                 value=["OWNER", "MEMBER"])
    assert holds("pull_request", fixture("pull_request.opened.json"), field="author_association", op="equals",
                 value="OWNER")
    payload = fixture("issue_comment.created.json")
    payload["comment"]["author_association"] = "FIRST_TIME_CONTRIBUTOR"
    assert holds("issue_comment", payload, field="author_association", op="is_not_one_of",
                 value=["OWNER", "MEMBER", "COLLABORATOR"])
    # kinds whose payload carries no association read "": an allow-list never holds there
    assert not holds("push", fixture("push.branch.json"), field="author_association", op="is_one_of",
                     value=["OWNER"])


@pytest.mark.parametrize("spec,message", [
    ({"field": "author_association", "op": "equals", "value": "MAINTAINER"}, "'MAINTAINER' is not"),
    ({"field": "author_association", "op": "is_one_of", "value": ["OWNER", "owner"]}, "'owner' is not"),
    ({"field": "conclusion", "op": "equals", "value": "failure"}, "unknown for issues"),
    ({"field": "on_pull_request", "op": "equals", "value": "yes"}, "unknown for issues"),
])
def test_bad_filters_on_the_new_kinds(spec, message):
    with pytest.raises(FilterError, match=message):
        compile_filter(spec, ["issues"])
    assert compile_filter({"field": "author_association", "op": "equals", "value": "owner", "ignore_case": True},
                          ["issues"])


# (kind, fixture, field, a value of the field, a value it does not have)
CASES = [
    ("issues", "issues.opened.json", "author", "Codertocat", "octocat"),
    ("issues", "issues.opened.json", "title", "Spelling error in the README file", "Typo"),
    ("issues", "issues.opened.json", "body", "It looks like you accidently spelled 'commit' with two 't's.", "x"),
    ("issues", "issues.labeled.json", "labels", "bug", "enhancement"),
    ("issues", "issues.opened.json", "assignees", "Codertocat", "hubot"),
    ("issues", "issues.opened.json", "state", "open", "closed"),
    ("issues", "issues.opened.json", "author_association", "OWNER", "NONE"),
    ("issue_comment", "issue_comment.created.json", "author", "Codertocat", "stranger"),
    ("issue_comment", "issue_comment.created.json", "body", "You are totally right! I'll get this fixed right away.", "/fix"),
    ("issue_comment", "issue_comment.created.json", "author_association", "OWNER", "CONTRIBUTOR"),
    ("pull_request_review", "pull_request_review.submitted.json", "author", "Codertocat", "hubot"),
    ("pull_request_review", "pull_request_review.submitted.json", "state", "commented", "approved"),
    # every example review has body null; this one carries the text a reviewer writes
    ("pull_request_review", ("pull_request_review.submitted.json", "review", "body", "Looks good, one nit"), "body",
     "Looks good, one nit", "Needs work"),
    ("pull_request_review", "pull_request_review.submitted.json", "author_association", "OWNER", "MEMBER"),
    ("pull_request_review_comment", "pull_request_review_comment.created.json", "author", "Codertocat", "x"),
    ("pull_request_review_comment", "pull_request_review_comment.created.json", "body",
     "Maybe you should use more emoji on this line.", "LGTM"),
    ("pull_request_review_comment", "pull_request_review_comment.created.json", "author_association", "OWNER", "NONE"),
    ("workflow_run", "workflow_run.completed.dispatch.json", "name", "Manually triggered workflow", "CI"),
    ("workflow_run", "workflow_run.completed.json", "conclusion", "success", "failure"),
    ("workflow_run", "workflow_run.completed.json", "head_branch", "master", "main"),
    ("workflow_run", "workflow_run.completed.json", "event", "repository_dispatch", "push"),
    ("push", "push.branch.json", "ref", "refs/heads/master", "refs/heads/main"),
    ("push", "push.branch.json", "pusher", "Codertocat", "hubot"),
    ("push", "push.branch.json", "files", "README.md", "setup.py"),
]


def test_every_field_of_the_new_kinds_is_covered():
    covered = {(kind, field) for kind, _, field, _, _ in CASES}
    no_association = {("workflow_run", "author_association"), ("push", "author_association")}  # always "" there
    for kind in ("issues", "issue_comment", "pull_request_review", "pull_request_review_comment", "workflow_run", "push"):
        for field, (ftype, _) in FIELDS[kind].items():
            if ftype != BOOL and (kind, field) not in no_association:  # booleans: test_issue_comment_fields_…
                assert (kind, field) in covered, (kind, field)


@pytest.mark.parametrize("kind,name,field,have,other", CASES)
@pytest.mark.parametrize("op", OPERATORS)
def test_every_operator_on_every_field(kind, name, field, have, other, op):
    if isinstance(name, tuple):
        name, obj, key, text = name
        payload = fixture(name)
        payload[obj][key] = text
    else:
        payload = fixture(name)
    value = have
    if op == "equals":
        spec, expected = {"value": have}, True
        miss = {"value": other}
    elif op == "contains":
        spec, expected = {"value": have[1:-1] or have}, True
        miss = {"value": other + "\u2603"}
    elif op == "starts_with":
        spec, expected = {"value": have[:3]}, True
        miss = {"value": "\u2603" + other}
    elif op == "is_one_of":
        spec, expected = {"value": [other, have]}, True
        miss = {"value": [other]}
    elif op == "is_not_one_of":
        spec, expected = {"value": [other]}, True
        miss = {"value": [other, have]}
    else:
        spec, expected = {"value": ".*" if not have else have[0] + ".*"}, True
        miss = {"value": have[:-1] if len(have) > 1 else "\u2603"}  # full match: a prefix is not enough
    assert holds(kind, payload, field=field, op=op, **spec) is expected
    assert holds(kind, payload, field=field, op=op, negate=True, **spec) is (not expected)
    assert holds(kind, payload, field=field, op=op, **miss) is (not expected)
    # ignore_case: the value in other case holds only with ignore_case (when case can differ at all)
    upper = {"value": [v.swapcase() for v in spec["value"]] if isinstance(spec["value"], list) else spec["value"].swapcase()}
    if op not in ("is_not_one_of",) and value.swapcase() != value and op != "matches_regex":
        assert holds(kind, payload, field=field, op=op, ignore_case=True, **upper) is expected
        if field == "author_association" and op != "contains" and op != "starts_with":
            with pytest.raises(FilterError, match="is not"):  # "owner" is no association: refused when applied
                holds(kind, payload, field=field, op=op, **upper)
        else:
            assert holds(kind, payload, field=field, op=op, **upper) is (not expected)


def test_fields_of_the_new_kinds_are_read_only_when_a_filter_names_them():
    fields = Fields("push", fixture("push.branch.json"))
    assert compile_filter({"field": "ref", "op": "equals", "value": "refs/heads/master"}, ["push"]).matches(fields)
    assert dict(fields) == {"ref": "refs/heads/master"}  # files were never walked
    assert FIELDS["push"]["files"][0] == LIST
