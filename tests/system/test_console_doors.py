"""The console as a door (issue 27): sign-in redirects stay on the site, every answer carries
the anti-framing and content headers, a console session lives in Redis and ends where its
cookie is replayed, the sign-in link is a one-time code, failed sign-ins are throttled per
address, the admin token is long and signs no cookie, and sessions are indexed per account
and routine. Over the Flask test client, real processes (the CLI, `routinely up`, gunicorn)
and a real Redis; every refusal checks what it stored."""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time

import pytest

from app import create_app
from app.auth import LOGIN_COOKIE, MAX_FAILURES, MAX_SESSIONS, SESSION_COOKIE
from app.pages import safe_next
from routinely.routines import catalog
from routinely.storage import keys
from routinely.config import ConfigError, Settings
from routinely.firing.start import Firing, fire_one
from tests.support import ADMIN_TOKEN, apply, body_of, Clock, delivery_headers, fixture, free_port, gh, gunicorn, redis_snapshot, routinely_up, SECRET
from tests.support import ROOT_DIR


ROOT = ROOT_DIR
SECURITY = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
OFF_SITE = ["/\t/evil.example", "/%09/evil.example", "//evil.example", "/\\evil.example", "\\\\evil.example",
            "https://evil.example/", "/%2F/evil.example", "/%252F%252Fevil.example", "javascript:alert(1)",
            "/x\r\nSet-Cookie: a=b", "/%0d%0aX-Injected:%20y", " /x", "/\x7f", "/\u2028x", "evil.example", "/.%2F/x%2F%2Fevil",
            "http:/evil.example", "/%5Cevil.example"]


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(app, address: str = "127.0.0.1", next_: str = "/"):
    """A client at `address`, signed in with the form; returns it and the page's CSRF token."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    form = client.get("/login").data.decode()
    resp = client.post("/login", data={"token": ADMIN_TOKEN, "next": next_, "csrf": csrf_of(form)})
    assert resp.status_code == 303, resp.data
    return client, csrf_of(client.get("/").data.decode())


def added(before: dict, conn) -> set[bytes]:
    """Keys written (made or changed) since `before`."""
    after = redis_snapshot(conn)
    return {k for k in after if before.get(k) != after[k]} | {k for k in before if k not in after}


def failure_keys(conn) -> list[bytes]:
    return sorted(conn.scan_iter(match=keys.sign_in_failures("*")))


# -- next: only a path on this site

@pytest.mark.parametrize("target", OFF_SITE)
def test_next_leaving_the_site_becomes_the_home_page(settings, conn, target):
    app = create_app(settings)
    client = app.test_client()
    form = client.get("/login").data.decode()
    resp = client.post("/login", data={"token": ADMIN_TOKEN, "next": target, "csrf": csrf_of(form)})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"  # never a 500 (CR/LF), never off-site
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", ["/", "/sessions?status=queued&kind=manual", "/routines/alice/r", "/usage?page=2"])
def test_next_on_the_site_is_kept(settings, conn, target):
    assert safe_next(target) == target
    client, csrf = sign_in(create_app(settings))
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    resp = client.post("/routines/alice/r/pause", data={"csrf": csrf, "next": target})
    assert resp.status_code == 303 and resp.headers["Location"] == target


def test_the_login_page_and_the_pause_form_never_carry_an_off_site_next(settings, conn):
    client, csrf = sign_in(create_app(settings))
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    anonymous = create_app(settings).test_client()
    page = anonymous.get("/login?next=/%09/evil.example").data.decode()
    assert 'name="next" value="/"' in page
    resp = client.post("/routines/alice/r/pause", data={"csrf": csrf, "next": "/%09/evil.example"})
    assert resp.headers["Location"] == "/"


# -- headers on every answer

def _assert_headers(resp, what: str) -> str:
    for name, value in SECURITY.items():
        assert resp.headers.get(name) == value, (what, name, resp.headers.get(name))
    csp = resp.headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "object-src 'none'" in csp, (what, csp)
    return csp


def test_every_answer_carries_the_security_headers(settings, conn, client):
    apply(conn, {"name": "r", "triggers": [{"api": {}}, gh(["pull_request"])]})
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    body = body_of(fixture("pull_request.opened.json"))
    anonymous = client.application.test_client()
    answers = {
        "page": client.get("/"), "session page": client.get(f"/sessions/{s['id']}"), "problem page": client.get("/routines/a/b"),
        "login": anonymous.get("/login"), "login 401": anonymous.get("/usage"), "api": client.get("/api/routines"),
        "api 401": anonymous.get("/api/routines"), "api 404": client.get("/api/nope"), "api 405": client.delete("/api/routines"),
        "log": client.get(f"/api/sessions/{s['id']}/log"), "metrics": client.get("/metrics"), "healthz": client.get("/healthz"),
        "spec": client.get("/openapi.yaml"),
        "webhook 202": client.post("/webhooks/github", data=body, headers=delivery_headers("pull_request", body)),
        "webhook 401": client.post("/webhooks/github", data=body, headers={**delivery_headers("pull_request", body),
                                                                           "X-Hub-Signature-256": "sha256=00"}),
        "webhook 405": client.get("/webhooks/github"),
        "fire 401": client.post("/v1/claude_code/routines/trig_x/fire"),
    }
    for what, resp in answers.items():
        _assert_headers(resp, what)
    down = create_app(settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for what, resp in {"api 503": down.test_client().get("/api/routines", headers=bearer),
                       "webhook 503": down.test_client().post("/webhooks/github", data=body,
                                                              headers=delivery_headers("pull_request", body))}.items():
        assert resp.status_code == 503, what
        _assert_headers(resp, what)


def test_pages_run_only_their_own_inline_code(settings, conn, client):
    """Each page's policy names a fresh nonce, and every inline script and style carries it:
    nothing else inline (no style attributes, no javascript: links) that the policy would refuse."""
    apply(conn, {"name": "r", "triggers": [{"api": {}}]})
    s = fire_one(settings, conn, "r", Firing(kind="manual"))
    nonces = set()
    for path in ("/", "/routines/alice/r", "/sessions", f"/sessions/{s['id']}", f"/sessions/{s['id']}/transcript",
                 "/events", "/usage", "/logout", "/routines/alice/nope", "/sessions/session_nope"):
        resp = client.get(path)
        page = resp.data.decode()
        csp = _assert_headers(resp, path)
        found = re.search(r"script-src 'self' 'nonce-([^']+)'", csp)
        inline = re.findall(r"<(script|style)([^>]*)>", page)
        if inline:
            assert found, path
            nonces.add(found.group(1))
            assert all(f'nonce="{found.group(1)}"' in attrs for _, attrs in inline), (path, inline)
        assert " style=" not in page and "javascript:" not in page and " on" + "click=" not in page, path
    assert len(nonces) >= 7  # one per response


def test_a_real_server_sends_them_on_every_door(redis_server, conn, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": redis_server.url, "ROUTINELY_DATA_DIR": str(tmp_path),
           "GITHUB_WEBHOOK_SECRET": SECRET, "ROUTINELY_ADMIN_TOKEN": ADMIN_TOKEN}
    proc, port = gunicorn("app:create_app()", env)
    try:
        body = body_of(fixture("pull_request.opened.json"))
        for method, path, data, headers in (("POST", "/webhooks/github", body, delivery_headers("pull_request", body)),
                                            ("POST", "/webhooks/github", b"{}", {"Content-Type": "application/json"}),
                                            ("GET", "/login?next=/%0d%0aX:%20y", b"", {}), ("GET", "/", b"", {}),
                                            ("GET", "/api/routines", b"", {}), ("GET", "/nope", b"", {})):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request(method, path, data, headers)
            resp = c.getresponse()
            resp.read()
            assert resp.status in (200, 202, 401, 404), (path, resp.status)
            for name, value in SECURITY.items():
                assert resp.getheader(name) == value, (path, name)
            assert "frame-ancestors 'none'" in resp.getheader("Content-Security-Policy"), path
            c.close()
    finally:
        proc.terminate()
        proc.wait(10)


# -- console sessions: in Redis, ended by sign-out

def test_a_cookie_replayed_after_sign_out_opens_nothing(settings, conn):
    app = create_app(settings)
    client, csrf = sign_in(app)
    cookie = client.get_cookie(SESSION_COOKIE)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie.value) and ADMIN_TOKEN not in cookie.value
    assert conn.exists(keys.console_session(keys.digest(cookie.value)))
    assert 12 * 3600 - 60 < conn.ttl(keys.console_session(keys.digest(cookie.value))) <= 12 * 3600
    copy = app.test_client()
    copy.set_cookie(SESSION_COOKIE, cookie.value)
    assert copy.get("/api/routines").status_code == 200  # a saved copy works while the session lives
    before = redis_snapshot(conn)
    assert client.post("/logout", data={}).status_code == 403  # sign-out needs its CSRF token too
    assert redis_snapshot(conn) == before
    out = client.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["Location"] == "/login"
    assert "routinely_session=;" in out.headers["Set-Cookie"]
    for c in (client, copy):
        assert c.get("/").status_code == 401 and c.get("/api/routines").status_code == 401
    c = app.test_client()
    c.set_cookie(SESSION_COOKIE, cookie.value)
    assert c.post("/api/routines/alice/r/pause", headers={"X-CSRF-Token": csrf}).status_code == 401
    assert not conn.exists(keys.console_session(keys.digest(cookie.value)))
    assert conn.zcard(keys.CONSOLE_SESSIONS) == 0


def test_sign_out_everywhere_ends_every_session(settings, conn):
    app = create_app(settings)
    clients = [sign_in(app) for _ in range(3)]
    bearer = app.test_client()
    bearer.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"
    assert all(c.get("/").status_code == 200 for c, _ in clients)
    assert clients[0][0].post("/logout", data={"csrf": clients[0][1], "everywhere": "1"}).status_code == 303
    assert all(c.get("/").status_code == 401 for c, _ in clients)
    assert not list(conn.scan_iter(match=keys.console_session("*"))) and not conn.exists(keys.CONSOLE_SESSIONS)
    assert bearer.get("/api/routines").status_code == 200  # the token itself still opens the API


def test_a_new_admin_token_ends_every_session(settings, conn):
    client, _ = sign_in(create_app(settings))
    cookie = client.get_cookie(SESSION_COOKIE).value
    rotated = create_app(settings.with_(admin_token="another-admin-token-of-at-least-32-chars")).test_client()
    rotated.set_cookie(SESSION_COOKIE, cookie)
    assert rotated.get("/").status_code == 401
    assert create_app(settings.with_(admin_token=None)).test_client(). \
        get("/", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}).status_code == 401  # no open mode


def test_sessions_are_capped_and_the_oldest_ends_first(settings, conn):
    """Each sign-in costs a record in Redis: past MAX_SESSIONS the oldest ends, so what Redis
    holds stops growing however many sign-ins follow."""
    app = create_app(settings)
    first, _ = sign_in(app)
    used, dbsize = [], []
    for n in (MAX_SESSIONS + 200, 500, 500):
        last = [sign_in(app)[0] for _ in range(n)][-1]
        # used_memory_dataset: Redis's data without per-client buffers (other tests' clients come and go)
        used.append(conn.info("memory")["used_memory_dataset"])
        dbsize.append(conn.dbsize())
        records = list(conn.scan_iter(match=keys.console_session("*"), count=1000))
        assert len(records) == MAX_SESSIONS and conn.zcard(keys.CONSOLE_SESSIONS) == MAX_SESSIONS
    assert first.get("/").status_code == 401 and last.get("/").status_code == 200
    assert dbsize[0] == dbsize[1] == dbsize[2]
    # host-side figure: Redis's data after each round of sign-ins past the cap (records replaced, not added)
    print(f"\nredis used_memory_dataset past the cap of {MAX_SESSIONS} sessions after {MAX_SESSIONS + 200}, "
          f"+500, +500 sign-ins: {used} B")
    assert used[2] - used[1] < 8 * 1024


def test_an_expired_session_is_trimmed_from_the_index_by_the_next_sign_in(settings, conn):
    clock = Clock(time.time())
    app = create_app(settings.with_(clock=clock))
    sign_in(app)
    clock.t += 12 * 3600 + 1
    sign_in(app)
    assert conn.zcard(keys.CONSOLE_SESSIONS) == 1


# -- the sign-in link: a one-time code, never the token

def _cli(redis_server, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PUBLIC_URL": "http://routinely.test"}
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, cwd=ROOT)


def test_the_sign_in_link_works_once_within_ten_minutes(settings, conn, redis_server, tmp_path):
    done = _cli(redis_server, tmp_path, "sign-in")
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip()
    assert link.startswith("http://routinely.test/login?code=") and ADMIN_TOKEN not in link
    code = link.split("code=", 1)[1]
    stored = keys.sign_in_code(keys.digest(code))
    assert 590 < conn.ttl(stored) <= 600
    assert code.encode() not in repr(redis_snapshot(conn)).encode()  # only its digest is kept
    app = create_app(settings)
    client = app.test_client()
    resp = client.get(f"/login?code={code}&next=/usage")
    assert resp.status_code == 303 and resp.headers["Location"] == "/usage"
    assert client.get("/usage").status_code == 200 and not conn.exists(stored)
    again = app.test_client()
    before = redis_snapshot(conn)
    spent = again.get(f"/login?code={code}")
    assert spent.status_code == 401 and "used already or has expired" in spent.data.decode()
    assert SESSION_COOKIE not in spent.headers.get("Set-Cookie", "")
    assert added(before, conn) == {keys.sign_in_failures("127.0.0.1").encode()}  # a wrong code is a failed sign-in


def test_a_token_in_the_url_is_refused_without_being_read(settings, conn):
    app = create_app(settings)
    before = redis_snapshot(conn)
    for token in (ADMIN_TOKEN, "wrong"):
        resp = app.test_client().get(f"/login?token={token}&next=/usage")
        assert resp.status_code == 400 and "never taken in a URL" in resp.data.decode()
        assert SESSION_COOKIE not in resp.headers.get("Set-Cookie", "")
    assert redis_snapshot(conn) == before  # not a session, not even a counted failure: it was never compared


def test_up_prints_a_one_time_link_and_never_the_token(redis_server, conn, tmp_path):
    with routinely_up(redis_server.url, tmp_path) as (port, data, lines):
        token = (data / "admin_token").read_text().strip()
        assert token not in "".join(lines)
        link = re.search(r"sign in at (http://\S+)", lines[1]).group(1)
        assert link.startswith(f"http://127.0.0.1:{port}/login?code=")
        path = link.split(str(port), 1)[1]
        statuses = []
        for _ in range(2):  # the link is printed once the web answers
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            resp = c.getresponse()
            resp.read()
            statuses.append((resp.status, resp.getheader("Set-Cookie") or ""))
        assert statuses[0][0] == 303 and statuses[0][1].startswith(f"{SESSION_COOKIE}=")
        assert statuses[1][0] == 401  # once only


# -- throttling failed sign-ins per address

def test_a_thousand_wrong_sign_ins_are_throttled_and_others_still_sign_in(settings, conn):
    app = create_app(settings)
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    csrf = csrf_of(attacker.get("/login").data.decode())
    # one wrong sign-in from elsewhere first: what the first one loads into this Redis once (its
    # scripts, which FLUSHALL keeps and an earlier test in this process may or may not have loaded)
    # is not what 1,000 of them cost
    warm = app.test_client()
    warm.environ_base["REMOTE_ADDR"] = "192.0.2.99"
    warm.post("/login", data={"token": "guess", "csrf": csrf_of(warm.get("/login").data.decode())})
    used_before = conn.info("memory")["used_memory_dataset"]
    before = redis_snapshot(conn)
    statuses = [attacker.post("/login", data={"token": f"guess-{i}", "csrf": csrf}) for i in range(1000)]
    codes = [r.status_code for r in statuses]
    assert codes[:MAX_FAILURES] == [401] * MAX_FAILURES and set(codes[MAX_FAILURES:]) == {429}
    assert 0 < int(statuses[-1].headers["Retry-After"]) <= keys.SIGN_IN_WINDOW
    assert "Too many failed sign-ins" in statuses[-1].data.decode()
    right = attacker.post("/login", data={"token": ADMIN_TOKEN, "csrf": csrf})
    assert right.status_code == 429 and SESSION_COOKIE not in right.headers.get("Set-Cookie", "")  # no oracle
    # one counter with a TTL is all 1,000 failures stored
    assert added(before, conn) == {keys.sign_in_failures("192.0.2.7").encode()}
    assert conn.get(keys.sign_in_failures("192.0.2.7")) == str(MAX_FAILURES).encode()
    assert 0 < conn.ttl(keys.sign_in_failures("192.0.2.7")) <= keys.SIGN_IN_WINDOW
    used_after = conn.info("memory")["used_memory_dataset"]
    print(f"\nredis used_memory_dataset before {used_before} B, after 1,000 wrong sign-ins {used_after} B")
    assert used_after - used_before < 4 * 1024
    # the Bearer door and the link count alike: the throttled address gets 429 there too
    assert attacker.get("/api/routines", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 429
    assert attacker.get("/login?code=" + "x" * 43).status_code == 429
    # another client signs in with the right token
    sign_in(app, address="192.0.2.8")


def test_wrong_bearer_tokens_are_throttled_too(settings, conn):
    app = create_app(settings)
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "2001:db8::1"
    for _ in range(MAX_FAILURES):
        assert client.get("/api/routines", headers={"Authorization": "Bearer wrong"}).status_code == 401
    throttled = client.get("/api/routines", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert "too many failed sign-ins" in throttled.get_json()["error"]
    neighbour = app.test_client()  # the same /64: one host owns a whole /64
    neighbour.environ_base["REMOTE_ADDR"] = "2001:db8::2"
    assert neighbour.get("/api/routines", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 429
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "2001:db8:0:1::1"
    assert other.get("/api/routines", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    assert failure_keys(conn) == [keys.sign_in_failures("2001:db8::/64").encode()]


def test_refusals_before_the_token_is_read_store_nothing(settings, conn):
    """A stale form (login CSRF) and an anonymous visitor store nothing: not even a counter."""
    app = create_app(settings)
    before = redis_snapshot(conn)
    anonymous = app.test_client()
    page = anonymous.get("/login")
    nonce = anonymous.get_cookie(LOGIN_COOKIE).value
    assert csrf_of(page.data.decode()) == nonce and "SameSite=Strict" in page.headers["Set-Cookie"]
    assert anonymous.get("/").status_code == 401 and anonymous.get("/api/sessions").status_code == 401
    assert anonymous.post("/login", data={"token": ADMIN_TOKEN, "csrf": "forged"}).status_code == 403
    assert app.test_client().post("/login", data={"token": ADMIN_TOKEN, "csrf": nonce}).status_code == 403  # no cookie
    assert redis_snapshot(conn) == before


# -- the admin token: long, and keying nothing

def test_a_short_admin_token_is_refused_at_start_up(redis_server, tmp_path):
    base = {"REDIS_URL": redis_server.url, "ROUTINELY_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**base, "ROUTINELY_ADMIN_TOKEN": "x" * 31})
    assert str(refused.value).startswith("ROUTINELY_ADMIN_TOKEN is 31 characters; it must be at least 32")
    assert "xxx" not in str(refused.value) and "\n" not in str(refused.value)
    assert Settings.from_env({**base, "ROUTINELY_ADMIN_TOKEN": "x" * 32}).admin_token == "x" * 32
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **base, "ROUTINELY_ADMIN_TOKEN": "a"}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"), "--bind",
                           f"127.0.0.1:{free_port()}", "app:create_app()"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "routinely: ROUTINELY_ADMIN_TOKEN is 1 characters; it must be at least 32" in done.stderr


def test_no_cookie_is_keyed_by_the_admin_token(settings, conn):
    """An anonymous cookie is a random nonce and a session cookie a random id: neither is a
    function of the token, so neither lets a guess be checked offline."""
    cookies = set()
    for token in (ADMIN_TOKEN, ADMIN_TOKEN, "another-admin-token-of-at-least-32-chars"):
        app = create_app(settings.with_(admin_token=token))
        assert app.secret_key is None  # Flask's signed session is not used at all
        client = app.test_client()
        client.get("/login")
        cookies.add(client.get_cookie(LOGIN_COOKIE).value)
    assert len(cookies) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]{43}", c) for c in cookies)


# -- sessions indexed by account and routine

def two_accounts_sharing_a_name(conn, settings) -> dict[str, list[str]]:
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max"}, {"name": "bob", "plan": "max"}], "routines": [
        {"account": a, "name": "shared", "prompt": "p", "triggers": [{"api": {}}]} for a in ("alice", "bob")]}, time.time())
    made = {"alice": [], "bob": []}
    for account in ("alice", "alice", "bob"):
        made[account].append(fire_one(settings, conn, f"{account}/shared", Firing(kind="manual"))["id"])
    return made


def test_two_accounts_routines_of_one_name_keep_their_sessions_apart(settings, conn, client, redis_server, tmp_path):
    made = two_accounts_sharing_a_name(conn, settings)
    for account in ("alice", "bob"):
        index = keys.sessions_of(f"{account}/shared")
        assert conn.zrevrange(index, 0, -1) == [s.encode() for s in reversed(made[account])]
        assert 0 < conn.ttl(index) <= keys.SESSION_TTL
        detail = client.get(f"/api/routines/{account}/shared").get_json()
        assert detail["last_session"]["id"] == made[account][-1]
        page = client.get(f"/routines/{account}/shared").data.decode()
        listed = re.findall(r'data-session="([^"]+)"', page)
        assert sorted(listed) == sorted(made[account])
        api = client.get(f"/api/sessions?routine={account}/shared").get_json()
        assert sorted(s["id"] for s in api) == sorted(made[account])
        filtered = client.get(f"/sessions?routine={account}/shared").data.decode()
        assert sorted(re.findall(r'data-session="([^"]+)"', filtered)) == sorted(made[account])
        done = _cli(redis_server, tmp_path, "sessions", "--routine", f"{account}/shared", "--json")
        assert sorted(s["id"] for s in json.loads(done.stdout)) == sorted(made[account])
    rows = {f"{r['account']}/{r['name']}": r for r in client.get("/api/routines").get_json()}
    assert rows["alice/shared"]["last_session"]["id"] == made["alice"][-1]
    assert rows["bob/shared"]["last_session"]["id"] == made["bob"][-1]
    metrics = client.get("/metrics").data.decode()
    assert 'routinely_routine_sessions{routine="alice/shared"} 2.0' in metrics
    assert 'routinely_routine_sessions{routine="bob/shared"} 1.0' in metrics
    before = redis_snapshot(conn)
    ambiguous = client.get("/api/sessions?routine=shared")
    assert ambiguous.status_code == 400 and "ACCOUNT/shared" in ambiguous.get_json()["error"]
    assert client.get("/sessions?routine=shared").status_code == 400
    refused = _cli(redis_server, tmp_path, "sessions", "--routine", "shared")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "several accounts" in refused.stderr
    assert client.get("/api/sessions?routine=nobody").get_json() == []
    assert redis_snapshot(conn) == before
