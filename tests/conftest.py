from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import redis

from routinely.config import Settings
from tests import proc_guard
from tests.support import ADMIN_TOKEN, ENV_KEYS_TO_CLEAR, SECRET, RedisServer


LINGER_SECONDS = 10  # a process being stopped when its test ends gets this long to go


def pytest_sessionstart(session):
    proc_guard.become_subreaper()  # orphans come back to pytest, where the check below sees them
    session.config._routinely_baseline = proc_guard.ours(_marker(session.config))


def _marker(config) -> str:
    """This run's temporary folder: session users' processes of this run carry it (TMPDIR, HOME)."""
    return str(config._tmp_path_factory.getbasetemp())


@pytest.fixture(autouse=True)
def _no_process_left_behind(request):
    """Fails the test that leaves a process of its own running (and kills it)."""
    marker = _marker(request.config)
    baseline = proc_guard.ours(marker)
    yield
    left = proc_guard.survivors(baseline, marker, LINGER_SECONDS)
    if left:
        lines = [proc_guard.describe(pid) for pid in left]
        proc_guard.kill(left)
        pytest.fail("processes outlived the test:\n  " + "\n  ".join(lines), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """After every fixture is gone nothing the run started may be left (session fixtures included)."""
    baseline = getattr(session.config, "_routinely_baseline", set())
    left = proc_guard.survivors(baseline, _marker(session.config), LINGER_SECONDS)
    if left:
        lines = [proc_guard.describe(pid) for pid in left]
        proc_guard.kill(left)
        print("\nroutinely: processes outlived the test run:\n  " + "\n  ".join(lines))
        session.exitstatus = 1


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
def served_app(app):
    """The app served for real on the host's loopback (werkzeug, threaded): its base URL."""
    import threading

    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(10)


@pytest.fixture
def client(app):
    """A client that presents the admin token (the API has no open mode)."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"
    return client


@pytest.fixture(scope="session")
def private_key() -> str:
    """One RSA key for every test that mints installation tokens (generating one takes ~0.1 s)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# -- the model gateway, served for real in this process against a fake vendor (tests/fake_models.py)
MODEL_KEYS = {"anthropic_api_key": "sk-ant-real", "openai_api_key": "sk-openai-real", "gemini_api_key": "gm-real"}


@pytest.fixture
def folder():
    """A short folder for door sockets (a unix socket's path has 107 bytes; pytest's tmp is long)."""
    path = tempfile.mkdtemp(prefix="rly-doors-")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake():
    from tests.fake_models import FakeMessages

    server = FakeMessages()
    yield server
    server.close()


@pytest.fixture
def open_gateway(conn, settings, fake, folder):
    """make(budget=None, sid=…, **settings changes) -> a started Gateway (its log lines in
    `.lines`) whose vendors are all the fake; every one is closed after the test."""
    from routinely.storage import keys
    from routinely.routines.prices import Prices
    from workers.gateway import Gateway
    from workers.gateway.meter import Budget, Meter

    opened = []

    def make(budget=None, sid="session_gw1", **changes):
        s = settings.with_(**{"anthropic_api_url": fake.url, "openai_api_url": fake.url, "gemini_api_url": fake.url,
                              **MODEL_KEYS, **changes})
        conn.hset(keys.session(sid), "status", "running")
        meter = Meter(conn, Prices({"claude-priced": {"input": 3, "output": 15}}), sid, "alice/r", "alice", "UTC",
                      budget or Budget())
        lines: list[str] = []
        gw = Gateway.start(s, meter, str(folder / f"{sid}.sock"), lines.append)
        gw.lines = lines
        opened.append(gw)
        return gw

    yield make
    for gw in opened:
        gw.close()


@pytest.fixture
def browser():
    """Debian's headless Chromium, driven by Playwright (never a browser build of its own)."""
    from playwright.sync_api import sync_playwright

    from tests.support import CHROMIUM

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


# -- GitHub's HTTP API faked by a local server (tests/fake_github.py), for the github connector's tests
@pytest.fixture
def fake_github():
    """The fake GitHub, recording what reached it: connector tests check what a session's calls did there."""
    from tests.fake_github import FakeGitHub

    server = FakeGitHub()
    yield server
    server.close()


@pytest.fixture
def fake_github_settings(settings, private_key, fake_github) -> Settings:
    """Settings with a GitHub App whose API is the fake GitHub: what a connector needs to call GitHub at all."""
    # its own App id: githubkit caches App JWTs per id in the process, and this key is not the other tests'
    return settings.with_(github_app_id="67890", github_private_key=private_key, github_api_url=fake_github.url)


@pytest.fixture
def installed(conn) -> None:
    """The App installed on octo/api and octo/sdk (installation 42): without it a connector refuses every call."""
    from routinely.storage import keys

    conn.hset(keys.INSTALLATIONS, mapping={"octo/api": 42, "octo/sdk": 42})


# -- kinds, one folder each: tests/unit (no Redis, no processes: seconds), tests/integration (a
# throwaway Redis, in this process), tests/system (real processes: workers, gunicorn, sandboxes,
# git, agents, a browser). Each test is marked by its folder: `pytest -m unit` is `pytest tests/unit`.
KINDS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.parent.name in KINDS:  # tests/unit/test_placement.py: every test is in one of them
            item.add_marker(getattr(pytest.mark, item.path.parent.name))
