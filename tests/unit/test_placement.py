"""Every test module lives in the folder of its kind, and the unit tests stay unit tests."""
from __future__ import annotations

import ast

from tests.conftest import KINDS
from tests.support import ROOT_DIR


TESTS = ROOT_DIR / "tests"
STORE_FIXTURES = {"conn", "redis_server", "own_redis", "client", "app", "settings", "served_app"}


def test_every_test_module_is_in_the_folder_of_its_kind():
    misplaced = [str(p.relative_to(TESTS)) for p in TESTS.rglob("test_*.py") if p.parent.name not in KINDS]
    assert misplaced == [], f"move these into tests/unit, tests/integration or tests/system: {misplaced}"


def test_no_test_module_imports_another():
    """Shared helpers live in tests/support.py and fixtures in a conftest.py: a test module that
    imports another runs the other's module-level code and ties their fates together."""
    found = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.rpartition(".")[2].startswith("test_"):
                found.append(f"{path.relative_to(TESTS)} imports {node.module}")
    assert found == []


def test_unit_tests_use_no_redis_and_no_app():
    """A test that needs a Redis (or the app, which needs one) is an integration test."""
    found = []
    for path in (TESTS / "unit").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                used = {a.arg for a in node.args.args} & STORE_FIXTURES
                if used:
                    found.append(f"{path.name}::{node.name} uses {sorted(used)}")
    assert found == [], "move these to tests/integration"
