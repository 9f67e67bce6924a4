"""Why a delivery started nothing: the explanation engine on every field and operator, and
end to end from a real delivery's event record (GET /api/events/ID, `routinely explain`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from filters import FIELDS, compile_filter, compile_filters, extract_fields
from filters.explain import routine_misses, show, trigger_miss
from filters.fields import BOOL, LIST
from routinely.routine_file import GithubTrigger
from tests.support import ADMIN_TOKEN, apply, body_of, delivery_headers, fixture, gh, REPO

PAYLOADS = {"pull_request": "pull_request.opened.installation.json", "release": "release.published.json",
            "issues": "issues.labeled.json", "issue_comment": "issue_comment.created.json",
            "pull_request_review": "pull_request_review.submitted.json",
            "pull_request_review_comment": "pull_request_review_comment.created.json",
            "workflow_run": "workflow_run.completed.json", "push": "push.branch.json"}


def miss(kind: str, payload: dict, event: str | None = None, events=None, **spec) -> str | None:
    trig = GithubTrigger(tuple(events or [kind]), (compile_filter(spec, [kind]),))
    return trigger_miss(trig, event or f"{kind}.opened", extract_fields(kind, payload))


@pytest.mark.parametrize("kind,field", [(k, f) for k in FIELDS for f in FIELDS[k]])
def test_every_field_names_itself_and_the_payloads_value(kind, field):
    payload = fixture(PAYLOADS[kind])
    actual = extract_fields(kind, payload)[field]
    kind_of = FIELDS[kind][field][0]
    if kind_of == BOOL:
        assert miss(kind, payload, field=field, op="equals", value=actual) is None
        assert miss(kind, payload, field=field, op="equals", value=not actual) == \
            f"{field}: {json.dumps(actual)} does not equal {json.dumps(not actual)}"
    elif kind_of == LIST:
        assert actual, f"the {kind} fixture needs a non-empty {field}"
        assert miss(kind, payload, field=field, op="equals", value=actual[0]) is None
        assert miss(kind, payload, field=field, op="equals", value="zz") == f'{field}: {show(actual)} has none that equals "zz"'
    elif field == "author_association":  # a closed set: the other value must be one of it
        other = "OWNER" if actual != "OWNER" else "NONE"
        if actual:
            assert miss(kind, payload, field=field, op="equals", value=actual) is None
        assert miss(kind, payload, field=field, op="equals", value=other) == f'{field}: {show(actual)} does not equal "{other}"'
    else:
        assert miss(kind, payload, field=field, op="equals", value=actual) is None
        assert miss(kind, payload, field=field, op="equals", value="zz") == f'{field}: {show(actual)} does not equal "zz"'


PR = fixture("pull_request.opened.installation.json")  # title "Update the README with new information.", labels ["bug"]
TITLE = '"Update the README with new information."'


@pytest.mark.parametrize("spec,expected", [
    ({"op": "equals", "value": "Fix login"}, f'title: {TITLE} does not equal "Fix login"'),
    ({"op": "contains", "value": "hotfix"}, f'title: {TITLE} does not contain "hotfix"'),
    ({"op": "starts_with", "value": "Fix"}, f'title: {TITLE} does not start with "Fix"'),
    ({"op": "is_one_of", "value": ["a", "b"]}, f'title: {TITLE} is not one of ["a", "b"]'),
    ({"op": "is_not_one_of", "value": ["Update the README with new information.", "x"]},
     f'title: {TITLE} is one of ["Update the README with new information.", "x"]'),
    ({"op": "matches_regex", "value": ".*hotfix.*"}, f'title: {TITLE} does not match regex ".*hotfix.*"'),
    ({"op": "matches_regex", "value": "README"}, f'title: {TITLE} does not match regex "README"'),  # whole field
    ({"op": "contains", "value": "README", "negate": True}, f'title: {TITLE} contains "README" (negate: true)'),
    ({"op": "equals", "value": "update the readme with new information!", "ignore_case": True},
     f'title: {TITLE} does not equal "update the readme with new information!" (ignoring case)'),
    ({"op": "starts_with", "value": "update", "ignore_case": True, "negate": True},
     f'title: {TITLE} starts with "update" (ignoring case) (negate: true)'),
])
def test_every_operator_says_what_failed(spec, expected):
    assert miss("pull_request", PR, field="title", **spec) == expected


@pytest.mark.parametrize("spec", [
    {"op": "equals", "value": "Update the README with new information."},
    {"op": "contains", "value": "README"},
    {"op": "starts_with", "value": "Update"},
    {"op": "is_one_of", "value": ["Update the README with new information."]},
    {"op": "is_not_one_of", "value": ["x"]},
    {"op": "matches_regex", "value": ".*README.*"},
    {"op": "contains", "value": "readme", "ignore_case": True},
    {"op": "contains", "value": "hotfix", "negate": True},
])
def test_a_holding_filter_explains_nothing(spec):
    assert miss("pull_request", PR, field="title", **spec) is None


def test_labels_are_one_of_a_list_and_negation_means_none():
    assert miss("pull_request", PR, field="labels", op="is_one_of", value=["hotfix", "urgent"]) == \
        'labels: ["bug"] has none that is one of ["hotfix", "urgent"]'
    assert miss("pull_request", PR, field="labels", op="equals", value="bug", negate=True) == \
        'labels: ["bug"] has one that equals "bug" (negate: true)'
    no_labels = json.loads(json.dumps(PR))
    no_labels["pull_request"]["labels"] = []
    assert miss("pull_request", no_labels, field="labels", op="equals", value="bug") == 'labels: [] has none that equals "bug"'


def test_the_event_the_first_failing_filter_and_long_values():
    assert miss("pull_request", PR, event="pull_request.synchronize", events=["pull_request.opened"],
                field="title", op="equals", value="x") == "event pull_request.synchronize not in [pull_request.opened]"
    filters = compile_filters([{"field": "base_branch", "op": "equals", "value": "master"},
                               {"field": "author", "op": "equals", "value": "someone"},
                               {"field": "title", "op": "equals", "value": "never read"}], ["pull_request"])
    fields = extract_fields("pull_request", PR)
    assert trigger_miss(GithubTrigger(("pull_request",), filters), "pull_request.opened", fields) == \
        'author: "Codertocat" does not equal "someone"'
    assert len(show("x" * 500)) < 90
    long_body = {"body": "x" * 1024}
    body_filter = GithubTrigger(("pull_request",), compile_filters([{"field": "body", "op": "contains", "value": "y"}], ["pull_request"]))
    assert trigger_miss(body_filter, "pull_request.opened", long_body, 1024).endswith("(recorded cut at 1024 characters: the rest was not kept)")
    assert "cut" not in trigger_miss(body_filter, "pull_request.opened", {"body": "short"}, 1024)
    # a field the record lacks (the routine's filters changed since) is said, not guessed
    assert "not recorded" in trigger_miss(GithubTrigger(("pull_request",), filters), "pull_request.opened", {"base_branch": "master"})


def test_a_routine_explains_its_repository_and_each_trigger():
    fields = extract_fields("pull_request", PR)
    t1 = GithubTrigger(("release",), ())
    t2 = GithubTrigger(("pull_request.opened",), compile_filters([{"field": "is_draft", "op": "equals", "value": True}], ["pull_request"]))
    assert routine_misses(["acme/web"], [t1], "pull_request.opened", "acme/api", fields) == \
        ["repository acme/api not in routine's repositories [acme/web]"]
    assert routine_misses(["ACME/api"], [t1, t2], "pull_request.opened", "acme/api", fields) == \
        ["event pull_request.opened not in [release]", "is_draft: false does not equal true"]
    assert routine_misses(["acme/api"], [t1, GithubTrigger(("pull_request",), ())], "pull_request.opened", "acme/api", fields) == []


def test_a_delivery_that_started_nothing_is_explained_everywhere(client, conn, redis_server, tmp_path):
    apply(conn, {"name": "hotfixes", "triggers": [gh(["pull_request.opened"], {"field": "title", "op": "matches_regex", "value": ".*hotfix.*"})]},
          {"name": "syncs", "triggers": [gh(["pull_request.synchronize"])]},
          {"name": "paused-one", "paused": True, "triggers": [gh(["pull_request"])]})
    payload = fixture("pull_request.opened.json")
    payload["pull_request"]["title"] = "Fix login"
    body = body_of(payload)
    headers = delivery_headers("pull_request", body)
    resp = client.post("/webhooks/github", data=body, headers=headers)
    assert resp.status_code == 202 and resp.get_json()["sessions"] == []
    event = client.get("/api/events").get_json()[0]
    got = client.get(f"/api/events/{event['id']}").get_json()
    assert got["explanation"]["summary"] == "matched, but paused-one is paused"
    reasons = {r["name"]: r["reasons"] for r in got["explanation"]["routines"]}
    assert reasons == {
        "hotfixes": ['title: "Fix login" does not match regex ".*hotfix.*"'],
        "syncs": ["event pull_request.opened not in [pull_request.synchronize]"],
        "paused-one": ["matched, but the routine is paused (skipped)"],
    }
    assert client.get(f"/api/events/{headers['X-GitHub-Delivery']}").get_json()["id"] == event["id"]  # by delivery id
    stored = json.loads(conn.get(f"rly:event:{event['id']}"))["filter_fields"]
    assert stored == {"title": "Fix login"}  # only what the watching routines' filters read
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cli", "explain", headers["X-GitHub-Delivery"]],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'alice/hotfixes: title: "Fix login" does not match regex ".*hotfix.*"' in out.stdout
    as_json = subprocess.run([sys.executable, "-m", "cli", "explain", event["id"], "--json"],
                             env=env, capture_output=True, text=True)
    assert json.loads(as_json.stdout)["explanation"] == got["explanation"]
    nope = subprocess.run([sys.executable, "-m", "cli", "explain", "nope"], env=env, capture_output=True, text=True)
    assert nope.returncode == 1 and nope.stderr.count("\n") == 1


def test_a_repository_nobody_watches(client, conn):
    apply(conn, {"name": "elsewhere", "repositories": ["acme/web"], "triggers": [gh(["pull_request"])]})
    body = body_of(fixture("pull_request.opened.json"))
    client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    event = client.get("/api/events").get_json()[0]
    got = client.get(f"/api/events/{event['id']}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_json()
    assert got["explanation"]["summary"] == f"no routine watches {REPO}"
    assert got["explanation"]["routines"][0]["reasons"] == [f"repository {REPO} not in routine's repositories [acme/web]"]
    assert "filter_fields" not in json.loads(conn.get(f"rly:event:{event['id']}"))  # nobody watches it: nothing kept


def test_watched_but_not_taken_says_how_many_watch(client, conn):
    apply(conn, {"name": "drafts", "triggers": [gh(["pull_request"], {"field": "is_draft", "op": "equals", "value": True})]})
    body = body_of(fixture("pull_request.opened.json"))
    client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body))
    event = client.get("/api/events").get_json()[0]
    got = client.get(f"/api/events/{event['id']}").get_json()["explanation"]
    assert got == {"summary": f"1 routine(s) watch {REPO}; none took this pull_request.opened",
                   "routines": [{"name": "drafts", "account": "alice", "reasons": ["is_draft: false does not equal true"]}]}


def test_a_command_trigger_says_which_command_the_comment_started_with():
    t = GithubTrigger(("issue_comment.created",), (), command="fix")
    assert trigger_miss(t, "issue_comment.created", {"body": "thanks! /fix later"}) == \
        'body: "thanks! /fix later" does not start with the command /fix'
    assert trigger_miss(t, "issue_comment.created", {"body": "/fixed it"}) == "command /fixed is not /fix"
    assert trigger_miss(t, "issue_comment.created", {"body": "/deploy now"}) == "command /deploy is not /fix"
    assert trigger_miss(t, "issue_comment.created", {"body": "  /fix the login"}) is None
    assert "not recorded" in trigger_miss(t, "issue_comment.created", {})


def test_a_comment_delivery_keeps_its_body_for_command_triggers(client, conn):
    apply(conn, {"name": "fixer", "triggers": [{"github": {"events": ["issue_comment.created"], "command": "fix"}}]})
    payload = fixture("issue_comment.created.json")
    payload["repository"]["full_name"] = REPO
    payload["comment"]["body"] = "/deploy please"
    body = body_of(payload)
    resp = client.post("/webhooks/github", data=body, headers=delivery_headers("issue_comment", body))
    assert resp.status_code == 202 and resp.get_json()["sessions"] == []
    event = client.get("/api/events").get_json()[0]
    got = client.get(f"/api/events/{event['id']}").get_json()["explanation"]
    assert got["routines"] == [{"name": "fixer", "account": "alice", "reasons": ["command /deploy is not /fix"]}]
