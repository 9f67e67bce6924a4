"""The price table covers what the pinned Claude Code CLI asks for by default: a session's cost
is never "unknown" for the default agent."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from routinely.routines.prices import Prices

CLAUDE = shutil.which("claude")


@pytest.mark.skipif(CLAUDE is None, reason="the Claude Code CLI is not installed (bash .ci/run installs it)")
def test_every_model_the_pinned_cli_asks_for_by_default_has_a_price(fake, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ANTHROPIC_BASE_URL": fake.url,
           "ANTHROPIC_API_KEY": "sk-ant-test", "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    done = subprocess.run([CLAUDE, "-p", "say hi"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90)
    asked = {r.body["model"] for r in fake.requests if isinstance(r.body, dict) and "model" in r.body}
    assert asked, done.stdout + done.stderr
    prices = Prices.load()
    assert {m: prices.price(m) for m in asked if prices.price(m) is None} == {}
