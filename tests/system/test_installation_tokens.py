"""Installation tokens against GitHub's HTTP API faked at the HTTP layer (respx):
a real RSA key, a real JWT, the token cached, and no secret anywhere the agent or a log sees."""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app import create_app
from routinely.routines import catalog
from routinely.records import session_log, sessions
from routinely.firing.start import Firing, fire_one
from tests.support import admin, SECRET, Remotes, body_of, delivery_headers, fixture
from workers.run import Runtime, SessionRun
from tests.support import AGENTS_DIR


API = "https://ghe.example.test/api/v3"
TOKEN = "ghs_TOPSECRETinstallationtoken0001"
AGENTS = AGENTS_DIR


@pytest.fixture
def key():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return pem, private.public_key()


@pytest.fixture
def app_settings(settings, key, tmp_path):
    root = tmp_path / "github"
    root.mkdir()
    remotes = Remotes(root)
    remotes.create("octo/api")
    return settings.with_(github_app_id="12345", github_private_key=key[0], github_api_url=API,
                          github_git_url=remotes.url, keep_workspaces=True,
                          agent=f"{sys.executable} {AGENTS / 'report.py'}",
                          sandbox=False)  # the agent writes its report outside the workspace


def install(client):
    payload = fixture("installation.created.json")
    payload["installation"]["id"] = 42
    payload["repositories"] = [{"id": 1, "name": "api", "full_name": "octo/api", "private": True}]
    body = body_of(payload)
    assert client.post("/webhooks/github", data=body, headers=delivery_headers("installation", body)).status_code == 202


def test_tokens_are_minted_with_the_app_jwt_cached_and_never_shown(app_settings, conn, key, tmp_path):
    client = admin(create_app(app_settings).test_client())
    install(client)
    catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [{
        "name": "r", "account": "a", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}],
        "environment": {"env": {"REPORT": str(tmp_path / "report.json")}}}]}, time.time())
    seen = []

    def mint(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"].startswith("Bearer ")
        claims = jwt.decode(request.headers["Authorization"][7:], key[1], algorithms=["RS256"])
        seen.append(claims)
        expires = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        return httpx.Response(201, json={"token": TOKEN, "expires_at": expires, "permissions": {"contents": "write"},
                                         "repository_selection": "all"})

    rt = Runtime(app_settings)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(f"{API}/app/installations/42/access_tokens").mock(side_effect=mint)
        first = fire_one(app_settings, conn, "a/r", Firing(kind="manual"))
        assert SessionRun(rt, first["id"]).run() == "succeeded", session_log.read(conn, first["id"])[0]
        second = fire_one(app_settings, conn, "a/r", Firing(kind="manual"))
        assert SessionRun(rt, second["id"]).run() == "succeeded"
    assert route.call_count == 1  # cached until shortly before it expires
    assert seen[0]["iss"] == "12345" and seen[0]["exp"] - seen[0]["iat"] <= 660

    report = (tmp_path / "report.json").read_text()
    logs = "\n".join(line for s in (first, second) for line in session_log.read(conn, s["id"])[0])
    files = ""
    for folder in (app_settings.data_dir / "workspaces", app_settings.data_dir / "relays"):
        for path in folder.rglob("*"):
            if path.is_file() and path.stat().st_size < 1_000_000:
                files += path.read_bytes().decode("utf-8", "replace")
    dump = json.dumps({k.decode(): str(v) for k, v in conn.hgetall(f"rly:session:{first['id']}").items()})
    pem_body = key[0].splitlines()[1]
    for secret in (TOKEN, pem_body, SECRET):
        assert secret not in report, "a secret reached the agent"
        assert secret not in logs, "a secret reached a session log"
        assert secret not in files, "a secret reached a workspace, checkout config or relay"
        assert secret not in dump


def test_a_refused_token_fails_the_session_with_one_clear_line(app_settings, conn, key):
    client = admin(create_app(app_settings).test_client())
    install(client)
    catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [{
        "name": "r", "account": "a", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}]}]}, time.time())
    with respx.mock:
        respx.post(f"{API}/app/installations/42/access_tokens").mock(return_value=httpx.Response(401, json={"message": "Bad credentials"}))
        s = fire_one(app_settings, conn, "a/r", Firing(kind="manual"))
        assert SessionRun(Runtime(app_settings), s["id"]).run() == "failed"
    log = "\n".join(session_log.read(conn, s["id"])[0])
    assert "GitHub refused an installation token for installation 42 (HTTP 401)" in log
    assert key[0].splitlines()[1] not in log and "Traceback" not in log


def test_a_repository_without_installation_fails_clearly(app_settings, conn):
    catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [{
        "name": "r", "account": "a", "prompt": "p", "repositories": ["octo/api"], "triggers": [{"api": {}}]}]}, time.time())
    s = fire_one(app_settings, conn, "a/r", Firing(kind="manual"))
    assert SessionRun(Runtime(app_settings), s["id"]).run() == "failed"
    assert "no installation of the GitHub App covers octo/api" in "\n".join(session_log.read(conn, s["id"])[0])
    assert sessions.get(conn, app_settings, s["id"])["status"] == "failed"
