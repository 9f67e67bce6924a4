"""The routine file's typed records and the JSON Schema made from them: every example file
the docs and fixtures show is valid by both, a bad one is refused by both, and what is
stored reads back as the same records."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import jsonschema
import orjson
import pytest
import yaml

from routinely.routine_file import (
    ApplyError, Environment, GithubPolicy, Network, RateLimit, Routine, json_schema, parse_config, parse_stored,
)
from tests.support import FIXTURES
from tests.support import ROOT_DIR


ROOT = ROOT_DIR
NOW = 1_790_000_000.0  # 2026-09-21


def example_files() -> list[tuple[str, dict]]:
    """Every whole routine file shown: the fixtures, and YAML blocks of the docs with routines."""
    found = [(p.name, yaml.safe_load(p.read_text())) for p in sorted(FIXTURES.glob("routines*.yml"))]
    starter = ROOT / "cli" / "starter.yml"  # what `routinely init` writes
    if starter.exists():
        found.append((starter.name, yaml.safe_load(starter.read_text())))
    for doc in sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"]):
        for n, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "routines" in data:
                found.append((f"{doc.name}#{n}", data))
    return found


EXAMPLES = example_files()


def validator() -> jsonschema.protocols.Validator:
    schema = json_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_examples_are_found():
    assert "routines.contract.yml" in [name for name, _ in EXAMPLES] and len(EXAMPLES) >= 2


@pytest.mark.parametrize("name,data", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_every_example_file_is_valid_by_the_schema_and_applies(name, data):
    validator().validate(data)
    parse_config(copy.deepcopy(data), None)


@pytest.mark.parametrize("path,value", [
    ("routines.0.environment.network", "some"),
    ("routines.0.colour", "blue"),
    ("routines.0.triggers.0", {"github": {}, "api": {}}),
    ("routines.0.timeout_minutes", "60"),
    ("accounts.0.plan", "gold"),
    ("routines.0.github", {"writes": ["merge_pull_request"]}),
])
def test_a_bad_file_is_refused_by_the_schema_and_by_apply(path, value):
    data = copy.deepcopy(dict(EXAMPLES)["routines.contract.yml"])
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    assert list(validator().iter_errors(data))
    with pytest.raises(ApplyError) as exc:
        parse_config(data, NOW)
    assert "\n" not in str(exc.value) and "validation error" not in str(exc.value)


def test_the_schema_is_the_models():
    schema = json_schema()
    assert schema["$schema"].endswith("2020-12/schema") and schema["additionalProperties"] is False
    routine = schema["$defs"]["Routine"]
    assert set(routine["required"]) == {"name", "account", "prompt", "triggers"}
    assert set(routine["properties"]) == set(Routine.keys())
    assert "github" in routine["properties"] and "github_policy" not in routine["properties"]  # the file's words
    assert schema["$defs"]["Environment"]["properties"]["network"]["$ref"].endswith("/Network")


def test_records_have_the_files_defaults_and_types():
    config = parse_config({"accounts": [{"name": "bob"}], "routines": [
        {"name": "r", "account": "bob", "prompt": "p", "triggers": [{"api": {}}]}]}, NOW)
    routine = config.routines[0]
    assert routine.key == "bob/r" and routine.api and routine.github == () and routine.schedules == ()
    assert routine.rate_limit == RateLimit(events=30, per_seconds=3600)
    assert routine.environment == Environment() and routine.environment.network is Network.FULL
    assert routine.github_policy == GithubPolicy() and routine.agent is None
    assert routine.timeout_minutes == 60 and routine.branch_prefix == "claude/"
    assert config.accounts[0].daily_cap == 5 and config.accounts[0].timezone == "UTC"
    with pytest.raises(Exception):
        routine.paused = True  # records are frozen: a change is a new, validated record


def test_what_is_stored_reads_back_the_same():
    config = parse_config(copy.deepcopy(dict(EXAMPLES)["routines.contract.yml"]), NOW)
    stored = orjson.dumps(config.to_file())
    again = parse_stored(stored)
    assert again.to_file() == config.to_file()
    routine, before = again.routines[0], config.routines[0]
    assert [s.id for s in routine.schedules] == [s.id for s in before.schedules]  # a schedule's id is kept
    assert routine.github == tuple(t for t in routine.github) and routine.github[1].roles == {"admin", "maintain", "write"}
    # schedules took the account's timezone when applied; the stored form says it
    assert {s.spec["timezone"] for s in routine.schedules} == {"Asia/Tokyo", "UTC"}


def test_a_configuration_stored_in_the_earlier_shape_still_reads():
    config = parse_config({"accounts": [{"name": "bob"}], "routines": [
        {"name": "r", "account": "bob", "prompt": "p", "triggers": [{"api": {}}]}]}, NOW).to_file()
    config["accounts"] = {a["name"]: a for a in config["accounts"]}  # accounts by name, as stored before
    config["routines"][0]["agent"] = None
    assert parse_stored(orjson.dumps(config)).routines[0].key == "bob/r"


def test_a_shape_no_check_words_is_still_one_line():
    with pytest.raises(ApplyError) as exc:
        parse_config({"accounts": [{"name": "a"}], "connectors": {"x": {"command": "c", "type": 5}}}, NOW)
    assert str(exc.value).startswith("connector 'x': type: ") and "\n" not in str(exc.value)


def test_the_schema_tells_editors_the_trigger_kinds():
    trigger = json_schema()["$defs"]["Trigger"]
    assert trigger["minProperties"] == trigger["maxProperties"] == 1
    assert set(trigger["properties"]) == {"github", "api", "schedule"}


def test_the_committed_schema_is_what_routinely_schema_prints():
    """Editors read the committed copy (its path is in `routinely init`'s first line): it must be current."""
    committed = ROOT_DIR / "routinely" / "routines.schema.json"
    printed = subprocess.run([sys.executable, "-m", "cli", "schema"], capture_output=True, text=True, check=True).stdout
    assert json.loads(committed.read_text()) == json.loads(printed) == json_schema(), \
        "run `routinely schema > routinely/routines.schema.json`"
