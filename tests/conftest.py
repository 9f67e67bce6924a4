from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from routinely.config import Settings
from tests.support import ADMIN_TOKEN, ENV_KEYS_TO_CLEAR, SECRET, RedisServer


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # the worker's own environment must not steer tests (nor leak into them)
    for key in ENV_KEYS_TO_CLEAR:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def conn(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()  # only ever the server this run started
    return client


@pytest.fixture
def settings(redis_server, conn, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        data_dir=tmp_path / "data",
        public_url="http://routinely.test",
        webhook_secret=SECRET,
        agent="true",
        admin_token=ADMIN_TOKEN,
    )


@pytest.fixture
def app(settings):
    from app import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    """A client that presents the admin token (the API has no open mode)."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"
    return client
