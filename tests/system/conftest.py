"""Fixtures of more than one system test module: the worker processes' world (tests/conftest.py holds the run-wide
ones, tests/support.py the plain helpers)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from routinely.config import Settings
from tests.support import AGENTS_DIR, WORKER_SENTINEL, RedisServer, Remotes


@pytest.fixture
def remotes(tmp_path: Path) -> Remotes:
    """An empty folder of bare repositories standing in for GitHub: each test creates the repositories it clones."""
    root = tmp_path / "github"
    root.mkdir()
    return Remotes(root)


@pytest.fixture
def remotes_with_octo_api(remotes: Remotes) -> Remotes:
    """`remotes` holding octo/api (main, a README): the repository apply_reporting_routine's routine clones."""
    remotes.create("octo/api")
    return remotes


@pytest.fixture
def worker_env(redis_server: RedisServer, remotes: Remotes, settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The environment of a worker whose agent is report.py, unsandboxed: its secrets (WORKER_SENTINEL, the webhook
    secret) are what a session must never see."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "REDIS_URL": redis_server.url,
        "GITHUB_GIT_URL": remotes.url,
        "ROUTINELY_DATA_DIR": str(settings.data_dir),
        "PUBLIC_URL": settings.public_url,
        "ROUTINELY_AGENT": f"{sys.executable} {AGENTS_DIR / 'report.py'}",
        "ROUTINELY_SESSION_USERS": "off",  # these agents run the worker's own Python (under /root)
        "ROUTINELY_SANDBOX": "off",  # they write their reports outside the workspace (test_isolation: the sandbox)
        "GITHUB_WEBHOOK_SECRET": "whsec-must-not-leak",
        "WORKER_SENTINEL": WORKER_SENTINEL,
        "SLACK_TOKEN": "xoxb-for-the-connector",
        "ALLOWED_FOR_AGENT": "yes",
    }


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A persistent redis-server of this test's own: fault tests stop, kill and restart it under a running worker."""
    server = RedisServer(persistent=True)
    yield server
    server.stop()
