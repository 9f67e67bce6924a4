"""Applying routine files: the contract's example, every refusal, all-or-nothing storage."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from routinely.routines import catalog
from routinely.routine_file import ApplyError
from tests.support import FIXTURES, redis_snapshot

EXAMPLE = yaml.safe_load((FIXTURES / "routines.contract.yml").read_text())
NOW = 1_790_000_000.0  # 2026-09-21


def test_the_contract_example_applies_with_defaults_filled(conn):
    cat, diff = catalog.apply(conn, copy.deepcopy(EXAMPLE), NOW)
    assert diff == {"added": ["alice/pr-review"], "changed": [], "removed": [],
                    "accounts": {"added": ["alice"], "changed": [], "removed": []}}
    raised = copy.deepcopy(EXAMPLE)
    raised["accounts"][0]["plan"] = "enterprise"  # a changed account is reported, its routines untouched
    _, again = catalog.apply(conn, raised, NOW)
    assert again == {"added": [], "changed": [], "removed": [], "accounts": {"added": [], "changed": ["alice"], "removed": []}}
    cat, _ = catalog.apply(conn, copy.deepcopy(EXAMPLE), NOW)
    routine = cat.routines["alice/pr-review"]
    assert routine.api and len(routine.github) == 2 and len(routine.schedules) == 2
    assert routine.github[1].command == "fix" and routine.github[1].roles == {"admin", "maintain", "write"}
    assert routine.branch_prefix == "claude/"
    assert catalog.load(conn).routines["alice/pr-review"].to_file() == routine.to_file()
    assert cat.accounts["alice"].daily_cap == 15


def test_defaults_when_a_file_sets_no_limits(conn):
    data = {
        "accounts": [{"name": "bob"}],
        "routines": [{"name": "r", "account": "bob", "prompt": "p", "triggers": [{"api": {}}]}],
    }
    cat, _ = catalog.apply(conn, data, NOW)
    assert cat.routines["bob/r"].rate_limit.to_file() == {"events": 30, "per_seconds": 3600}
    assert cat.accounts["bob"].rate_limit.to_file() == {"events": 100, "per_seconds": 3600}
    assert cat.accounts["bob"].plan == "pro" and cat.accounts["bob"].daily_cap == 5


def broken(path: str, value) -> dict:
    """The example with one thing changed, `path` like routines.0.triggers.0.github.filters.1.op."""
    data = copy.deepcopy(EXAMPLE)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("routines.0.triggers.0.github.filters.1.op", "is_any_of",
         "routine 'pr-review' (account alice), trigger 1 (github): filter 2: op 'is_any_of' is unknown"),
        ("routines.0.triggers.0.github.filters.0.field", "base",
         "trigger 1 (github): filter 1: field 'base' is unknown for pull_request"),
        ("routines.0.triggers.0.github.filters.2.value", "(a)\\1", "filter 3: bad pattern"),
        ("routines.0.triggers.0.github.filters.3.value", "false", "filter 4: field is_draft is a boolean"),
        ("routines.0.triggers.0.github.events", ["deployment"], "event 'deployment' is not supported"),
        ("routines.0.triggers.0.github.events", ["push.created"], "'created' is not a push action; known: none (write push)"),
        ("routines.0.triggers.0.github.events", ["pull_request.open"], "'open' is not a pull_request action"),
        ("routines.0.triggers.3.schedule.cron", "*/30 * * * *", "trigger 4 (schedule): cron '*/30 * * * *' can run 30 minutes apart"),
        ("routines.0.triggers.2.schedule.time", "9am", "trigger 3 (schedule): time must be"),
        ("routines.0.triggers.2.schedule.timezone", "Mars/Olympus", "not an IANA time zone"),
        ("routines.0.name", "PR Review", "name must be 1-64 of a-z"),
        ("routines.0.account", "carol", "account 'carol' is not declared"),
        ("routines.0.connectors", ["slack", "jira"], "['jira'] are not configured"),
        ("routines.0.environment.network", "some", "environment.network must be one of"),
        ("routines.0.rate_limit", {"events": 0, "per_seconds": 60}, "rate_limit.events takes a whole number from 1"),
        ("routines.0.rate_limit", {"events": 10}, "rate_limit takes {events: N, per_seconds: S}"),
        ("accounts.0.rate_limit", {"events": 5, "per_seconds": -1}, "account 'alice': rate_limit.per_seconds"),
        ("accounts.0.plan", "gold", "plan must be one of"),
        ("routines.0.timeout_minutes", 0, "timeout_minutes takes a number of minutes"),
        ("routines.0.prompt", KeyError, "prompt is required"),
        ("routines.0.triggers", [], "triggers must be a non-empty list"),
        ("routines.0.triggers.1", {"api": {"token": "x"}}, "api takes no settings"),
        ("routines.0.repositories", ["not a repo"], "repositories must be a list of owner/name"),
        ("routines.0.paused", "no", "paused takes true or false"),
    ],
)
def test_a_bad_file_is_rejected_whole_naming_where(conn, path, value, message):
    catalog.apply(conn, {"accounts": [{"name": "zed"}], "routines": [
        {"name": "keep", "account": "zed", "prompt": "p", "triggers": [{"api": {}}]}]}, NOW)
    before = redis_snapshot(conn)
    with pytest.raises(ApplyError) as exc:
        catalog.apply(conn, broken(path, value), NOW)
    assert message in str(exc.value)
    assert redis_snapshot(conn) == before  # nothing stored


def test_one_bad_routine_among_good_ones_stores_nothing(conn):
    data = copy.deepcopy(EXAMPLE)
    good = copy.deepcopy(data["routines"][0])
    good["name"] = "second"
    bad = copy.deepcopy(good)
    bad["name"] = "third"
    bad["triggers"] = [{"schedule": {"cron": "0,30 9 * * *"}}]
    data["routines"] += [good, bad]
    with pytest.raises(ApplyError, match="routine 'third'.*shortest|routine 'third'.*30 minutes apart"):
        catalog.apply(conn, data, NOW)
    assert redis_snapshot(conn) == {}


def test_duplicate_routine_names_in_one_account_are_refused(conn):
    data = copy.deepcopy(EXAMPLE)
    data["routines"].append(copy.deepcopy(data["routines"][0]))
    with pytest.raises(ApplyError, match="used twice"):
        catalog.apply(conn, data, NOW)


def test_an_at_schedule_in_the_past_is_refused(conn):
    data = broken("routines.0.triggers.3", {"schedule": {"at": "2020-01-01T09:00"}})
    with pytest.raises(ApplyError, match="is in the past"):
        catalog.apply(conn, data, NOW)


def test_reapply_reports_changes_and_removals(conn):
    catalog.apply(conn, copy.deepcopy(EXAMPLE), NOW)
    data = broken("routines.0.paused", True)
    cat, diff = catalog.apply(conn, data, NOW)
    assert diff["changed"] == ["alice/pr-review"] and cat.version == 2
    _, diff = catalog.apply(conn, {"accounts": [{"name": "alice"}]}, NOW)
    assert diff["removed"] == ["alice/pr-review"]


def test_cli_apply_and_list(conn, redis_server, tmp_path):
    good = tmp_path / "routines.yml"
    good.write_text((FIXTURES / "routines.contract.yml").read_text().replace('at: "2026-12-01T09:00"', ""))
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "cli", *a], env=env, capture_output=True, text=True)  # noqa: E731
    result = run("apply", str(good))
    assert result.returncode == 0, result.stderr
    assert "1 routine(s)" in result.stdout and "; account alice added" in result.stdout
    # no GitHub App here: the trigger with roles would drop every firing, and apply says so
    assert "trigger 5 (github): roles need a GitHub App to ask a sender's role" in result.stderr, result.stderr
    listed = run("list", "--json")
    assert '"name": "pr-review"' in listed.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("routines: [{name: x, account: nobody, prompt: p, triggers: [{api: {}}]}]\n")
    before = redis_snapshot(conn)
    result = run("apply", str(bad))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "account 'nobody' is not declared" in result.stderr
    assert redis_snapshot(conn) == before
    result = run("apply", str(tmp_path / "missing.yml"))
    assert result.returncode == 1 and "cannot read" in result.stderr
