"""Where the contract was read two ways: one case folding for every operator, from_fork
ignoring case, null booleans false, wrong payload shapes read as absent."""
from __future__ import annotations

from typing import Any

import pytest

from filters import FIELDS, compile_filter, extract_fields
from filters.fields import BOOL
from tests.support import fixture

STRING_OPS = [("equals", lambda v: v), ("contains", lambda v: v), ("starts_with", lambda v: v),
              ("is_one_of", lambda v: [v]), ("matches_regex", lambda v: v)]


def holds(op: str, value: Any, title: str, ignore_case: bool = True) -> bool:
    spec = {"field": "title", "op": op, "value": value, "ignore_case": ignore_case}
    return compile_filter(spec, ["pull_request"]).predicate(title)


@pytest.mark.parametrize("op,shape", STRING_OPS, ids=[o for o, _ in STRING_OPS])
@pytest.mark.parametrize("value,title,same", [
    ("readme", "README", True),
    ("k", "\u212a", True),  # KELVIN SIGN folds to k
    ("σ", "ς", True),  # final sigma
    ("straße", "STRASSE", False),  # one character to two: no operator folds it
    ("STRASSE", "straße", False),
])
def test_ignore_case_folds_the_same_way_for_every_operator(op, shape, value, title, same):
    assert holds(op, shape(value), title) is same
    assert holds(op, shape(value), title, ignore_case=False) is (value == title)


def test_is_not_one_of_folds_like_is_one_of():
    assert holds("is_not_one_of", ["Readme", "\u212a"], "README") is False
    assert holds("is_not_one_of", ["Readme"], "straße") is True


def test_contains_and_starts_with_keep_their_meaning_when_folding():
    assert holds("contains", "FIX", "a\nhotfix\nhere")  # across lines
    assert holds("starts_with", "HOT", "hotfix") and not holds("starts_with", "FIX", "hotfix")
    assert not holds("equals", "a|b", "A") and holds("equals", "A.B", "a.b") and not holds("equals", "A.B", "axb")


def test_from_fork_compares_repository_names_ignoring_case():
    pr = fixture("pull_request.opened.json")
    pr["pull_request"]["head"]["repo"]["full_name"] = pr["pull_request"]["base"]["repo"]["full_name"].upper()
    assert extract_fields("pull_request", pr)["from_fork"] is False
    pr["pull_request"]["head"]["repo"]["full_name"] = "someone-else/Hello-World"
    assert extract_fields("pull_request", pr)["from_fork"] is True


def _null_booleans(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _null_booleans(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_null_booleans(v) for v in obj]
    return None if isinstance(obj, bool) else obj


@pytest.mark.parametrize("kind,name", [("pull_request", "pull_request.opened.json"), ("release", "release.prereleased.json"),
                                       ("pull_request", "pull_request.converted_to_draft.json")])
def test_null_booleans_read_false_for_every_boolean_field(kind, name):
    fields = extract_fields(kind, _null_booleans(fixture(name)))
    for field, (kind_of, _) in FIELDS[kind].items():
        if kind_of == BOOL and field != "from_fork":
            assert fields[field] is False, field


@pytest.mark.parametrize("labels", [5, True, "bug", {"name": "bug"}, None])
def test_labels_of_the_wrong_shape_read_as_none(labels):
    pr = fixture("pull_request.labeled.json")
    pr["pull_request"]["labels"] = labels
    assert extract_fields("pull_request", pr)["labels"] == []
