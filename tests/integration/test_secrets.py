"""The secret store: sealed at rest in Redis, listed without values, rotated without loss; the
CLI and the admin API that write it. Real Redis, the real CLI entry point, the real app."""
from __future__ import annotations

import base64
import io
import os
import stat
import time

import pytest

from cli.main import main
from routinely.routines import catalog
from routinely.storage import keys
from routinely.config import ConfigError, Settings
from routinely.secrets.secret_store import NoKey, Scope, SecretError, SecretStore
from tests import openapi_check

KEY = os.urandom(32)
NEW_KEY = os.urandom(32)
VALUE = "sntrys_the-plaintext-value-0123456789"


@pytest.fixture
def keyed(settings):
    return settings.with_(secrets_key=KEY)


def _everything_in(conn) -> bytes:
    """Every key's name and value, whatever its type."""
    out = []
    for key in conn.scan_iter("*"):
        kind = conn.type(key)
        out.append(key)
        if kind == b"string":
            out.append(conn.get(key))
        elif kind == b"hash":
            out += [b for pair in conn.hgetall(key).items() for b in pair]
        elif kind == b"set":
            out += list(conn.smembers(key))
        elif kind == b"list":
            out += conn.lrange(key, 0, -1)
        elif kind == b"zset":
            out += [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            out += [v for _, fields in conn.xrange(key) for pair in fields.items() for v in pair]
    return b"\n".join(out)


def _apply(conn, *routines: str, accounts=("alice",)) -> None:
    catalog.apply(conn, {"accounts": [{"name": a, "plan": "max"} for a in accounts], "routines": [
        {"name": name, "account": accounts[0], "prompt": "p", "repositories": ["o/r"], "triggers": [{"api": {}}]}
        for name in routines]}, time.time())


def test_redis_holds_no_plaintext_and_a_value_opens_only_under_its_own_name_and_scope(conn, keyed):
    store = SecretStore.of(keyed, conn)
    assert store.set("SENTRY_TOKEN", VALUE, Scope.routine("alice/review")) is True
    assert store.set("NPM_TOKEN", "npm_0123456789abcdef", Scope.account("alice")) is True
    assert store.set("SENTRY_TOKEN", VALUE, Scope.routine("alice/review")) is False  # replaced
    everything = _everything_in(conn)
    assert VALUE.encode() not in everything and b"npm_0123456789abcdef" not in everything
    assert base64.b64encode(VALUE.encode()) not in everything
    assert store.for_routine(["SENTRY_TOKEN", "NPM_TOKEN"], "alice/review", "alice") == {
        "SENTRY_TOKEN": VALUE, "NPM_TOKEN": "npm_0123456789abcdef"}
    # the sealed value copied to another name or scope does not open there
    sealed = conn.hget(keys.secret("routine:alice/review", "SENTRY_TOKEN"), "value")
    conn.hset(keys.secret("routine:mallory/x", "SENTRY_TOKEN"), mapping={"value": sealed, "created_at": "1"})
    conn.hset(keys.secret("routine:alice/review", "OTHER_NAME"), mapping={"value": sealed, "created_at": "1"})
    with pytest.raises(SecretError, match="does not open") as caught:
        store.get("SENTRY_TOKEN", Scope.routine("mallory/x"))
    assert VALUE not in str(caught.value)
    with pytest.raises(SecretError, match="does not open"):
        store.get("OTHER_NAME", Scope.routine("alice/review"))
    # a wrong key opens nothing
    with pytest.raises(SecretError, match="key this service does not have"):
        SecretStore(conn, SecretStore.of(keyed.with_(secrets_key=NEW_KEY), conn).sealer).get(
            "SENTRY_TOKEN", Scope.routine("alice/review"))


def test_a_routine_finds_its_own_value_first_then_its_accounts_and_a_missing_one_is_named(conn, keyed):
    store = SecretStore.of(keyed, conn)
    store.set("TOKEN", "account-wide-value", Scope.account("alice"))
    store.set("TOKEN", "routine-own-value", Scope.routine("alice/a"))
    assert store.for_routine(["TOKEN"], "alice/a", "alice") == {"TOKEN": "routine-own-value"}
    assert store.for_routine(["TOKEN"], "alice/b", "alice") == {"TOKEN": "account-wide-value"}
    with pytest.raises(SecretError, match="not stored: MISSING, GONE"):
        store.for_routine(["TOKEN", "MISSING", "GONE"], "alice/a", "alice")
    with pytest.raises(SecretError, match="not stored: TOKEN"):
        store.for_routine(["TOKEN"], "bob/a", "bob")  # another account's value is never found
    used = {r["scope"]: r["last_used_at"] for r in store.list()}
    assert used["routine:alice/a"] and used["account:alice"]


def test_a_rotated_key_still_opens_and_rotate_seals_everything_under_the_new_one(conn, keyed):
    old = SecretStore.of(keyed, conn)
    old.set("A_TOKEN", VALUE, Scope.account("alice"))
    old.set("B_TOKEN", "second-value-123456", Scope.routine("alice/r"))
    rotated = SecretStore.of(keyed.with_(secrets_key=NEW_KEY, secrets_key_previous=KEY), conn)
    assert rotated.get("A_TOKEN", Scope.account("alice")) == VALUE  # decrypts with either key
    assert rotated.rotate() == (2, 0)
    assert rotated.rotate() == (0, 2)
    only_new = SecretStore.of(keyed.with_(secrets_key=NEW_KEY), conn)
    assert only_new.get("B_TOKEN", Scope.routine("alice/r")) == "second-value-123456"
    with pytest.raises(SecretError):
        old.get("A_TOKEN", Scope.account("alice"))  # the old key alone no longer opens them
    assert VALUE.encode() not in _everything_in(conn)


def test_the_cli_takes_values_from_stdin_or_a_file_and_never_prints_one(conn, keyed, capsys, monkeypatch, tmp_path):
    _apply(conn, "review")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(VALUE.encode() + b"\n")))
    main(["secret", "set", "SENTRY_TOKEN", "--routine", "review"], keyed)
    (tmp_path / "npm").write_text("npm_file_value_0123456789\n")
    main(["secret", "set", "NPM_TOKEN", "--file", str(tmp_path / "npm")], keyed)  # the only account: alice
    out = capsys.readouterr().out
    assert "stored SENTRY_TOKEN (routine:alice/review)" in out and "stored NPM_TOKEN (account:alice)" in out
    store = SecretStore.of(keyed, conn)
    assert store.get("SENTRY_TOKEN", Scope.routine("alice/review")) == VALUE  # the line break is not part of it
    assert store.get("NPM_TOKEN", Scope.account("alice")) == "npm_file_value_0123456789"
    main(["secret", "list"], keyed)
    main(["secret", "list", "--json"], keyed)
    listed = capsys.readouterr().out
    assert "SENTRY_TOKEN" in listed and "routine:alice/review" in listed and "account:alice" in listed
    assert VALUE not in listed and "npm_file_value" not in listed
    main(["secret", "rotate"], keyed)
    assert "re-sealed 0 secret(s)" in capsys.readouterr().out
    main(["secret", "rm", "NPM_TOKEN", "--account", "alice"], keyed)
    assert "removed NPM_TOKEN" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["secret", "rm", "NPM_TOKEN", "--account", "alice"], keyed)
    assert "no secret NPM_TOKEN" in capsys.readouterr().err
    # no value as an argument: argparse takes only names
    with pytest.raises(SystemExit):
        main(["secret", "set", "X_TOKEN", "--value", "v"], keyed)
    # no key: one line saying how to get one
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"whatever-value")))
    with pytest.raises(SystemExit):
        main(["secret", "set", "X_TOKEN", "--account", "alice"], keyed.with_(secrets_key=None))
    assert "no secrets key: set ROUTINELY_SECRETS_KEY" in capsys.readouterr().err


def test_the_admin_api_is_write_only_and_matches_the_spec(app, conn, settings):
    _apply(conn, "review", accounts=("alice", "bob"))
    app.extensions["routinely"].settings = settings.with_(secrets_key=KEY)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {settings.admin_token}"
    put = client.put("/api/secrets/SENTRY_TOKEN", json={"value": VALUE, "routine": "alice/review"})
    assert put.status_code == 201 and VALUE not in put.get_data(as_text=True)
    again = client.put("/api/secrets/SENTRY_TOKEN", json={"value": VALUE + "x", "routine": "review"})
    assert again.status_code == 200
    no_scope = client.put("/api/secrets/OTHER", json={"value": "v" * 10})
    assert no_scope.status_code == 400 and "accounts: alice, bob" in no_scope.get_json()["error"]
    listed = client.get("/api/secrets")
    assert VALUE not in listed.get_data(as_text=True) and listed.get_json()[0]["scope"] == "routine:alice/review"
    bad = client.put("/api/secrets/bad-name", json={"value": "v" * 10, "account": "alice"})
    assert bad.status_code == 400
    gone = client.delete("/api/secrets/SENTRY_TOKEN?routine=alice/review")
    missing = client.delete("/api/secrets/SENTRY_TOKEN?routine=alice/review")
    assert gone.status_code == 200 and missing.status_code == 404
    for resp, path, method in [(put, "/api/secrets/{name}", "put"), (again, "/api/secrets/{name}", "put"),
                               (no_scope, "/api/secrets/{name}", "put"), (listed, "/api/secrets", "get"),
                               (gone, "/api/secrets/{name}", "delete"), (missing, "/api/secrets/{name}", "delete")]:
        openapi_check.check(resp, path, method)
    app.extensions["routinely"].settings = settings  # no key: 503, and nothing stored
    assert client.put("/api/secrets/X_TOKEN", json={"value": "v" * 10, "account": "alice"}).status_code == 503


def test_the_key_comes_from_the_variable_or_the_file_up_makes(tmp_path):
    from cli.up import secrets_key

    data = tmp_path / "data"
    data.mkdir()
    assert Settings.from_env({"ROUTINELY_DATA_DIR": str(data)}).secrets_key is None
    made = secrets_key(data)
    assert stat.S_IMODE((data / "secrets_key").stat().st_mode) == 0o600
    assert secrets_key(data) == made  # kept across restarts
    assert Settings.from_env({"ROUTINELY_DATA_DIR": str(data)}).secrets_key == made
    mine = base64.b64encode(KEY).decode()
    assert Settings.from_env({"ROUTINELY_DATA_DIR": str(data), "ROUTINELY_SECRETS_KEY": mine}).secrets_key == KEY
    settings = Settings.from_env({"ROUTINELY_DATA_DIR": str(data), "ROUTINELY_SECRETS_KEY": mine,
                                  "ROUTINELY_SECRETS_KEY_PREVIOUS": base64.urlsafe_b64encode(NEW_KEY).decode().rstrip("=")})
    assert settings.secrets_key_previous == NEW_KEY
    assert mine not in repr(settings) and "secrets_key" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ROUTINELY_DATA_DIR": str(data), "ROUTINELY_SECRETS_KEY": "not-a-key-" + mine[:20]})
    assert mine[:20] not in str(caught.value)
    with pytest.raises(NoKey):
        SecretStore.of(Settings(redis_url="redis://x", data_dir=data), None)  # type: ignore[arg-type]
