"""A corpus of hostile requests, each with the statuses it may get and whether it is a
refusal (then nothing but the contract's counters may be stored).

Used in-process by tests/test_hostile.py and against a live server by bench/fuzz.py
(which also sends the `raw` framing cases over a socket).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from app.signature import sign
from routinely.routines import api_tokens, catalog
from routinely.records import session_log
from routinely.config import Settings
from routinely.firing.start import Firing, Starter
from tests.support import FIXTURES

ADMIN = "admin-t0ken-for-the-corpus-0123456789"  # at least 32 characters (routinely.config)
SECRET = "corpus-webhook-secret"
BETA = "experimental-cc-routine-2026-04-01"
MB = 1024 * 1024
HOOK = "/webhooks/github"


@dataclass
class Case:
    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    expect: frozenset[int] = frozenset({400})
    refusal: bool = True  # nothing but counters (rly:count:*) may change
    raw: bytes | None = None  # framing cases: these bytes as they are, on a socket


@dataclass
class Context:
    trigger: str
    token: str
    paused_trigger: str
    paused_token: str
    session: str


def prepare(conn: redis.Redis, settings: Settings) -> Context:
    """Routines, API tokens and one session with a log, for the corpus to aim at."""
    catalog.apply(conn, {"accounts": [{"name": "ops", "plan": "enterprise"}], "routines": [
        {"name": "alerts", "account": "ops", "prompt": "p", "repositories": ["Codertocat/Hello-World"],
         "triggers": [{"api": {}}, {"github": {"events": ["pull_request", "release"],
                                              "filters": [{"field": "title", "op": "contains", "value": "x",
                                                           "ignore_case": True}]}}]},
        {"name": "sleepy", "account": "ops", "prompt": "p", "paused": True, "triggers": [{"api": {}}]},
    ]}, time.time())
    cat = catalog.load(conn)
    trigger, token = api_tokens.create(conn, cat.find("alerts"))
    paused_trigger, paused_token = api_tokens.create(conn, cat.find("sleepy"))
    outcome = Starter(conn, settings).fire(Firing(kind="manual"), lambda c: [c.find("alerts")])
    session = outcome.sessions[0]["id"]
    session_log.append(conn, session, "a line")
    return Context(trigger, token, paused_trigger, paused_token, session)


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def _compact(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _hook(event: str, body: bytes, delivery: str, **over: str | None) -> dict[str, str]:
    h = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
         "X-Hub-Signature-256": sign(SECRET, body)}
    for k, v in over.items():
        k = k.replace("_", "-")
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    return h


def corpus(ctx: Context) -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    pr = _compact(_fixture("pull_request.opened.json"))
    n = iter(range(10**6))
    did = lambda: f"corpus-{next(n)}"  # noqa: E731

    # -- the webhook door: signatures
    for label, sig in [("missing", None), ("empty", ""), ("prefix only", "sha256="), ("sha1", "sha1=" + "0" * 40),
                       ("uppercase hex", sign(SECRET, pr).upper().replace("SHA256=", "sha256=")),
                       ("other secret", sign("nope", pr)), ("inner space", sign(SECRET, pr).replace("=", "= ")),
                       ("truncated", sign(SECRET, pr)[:-2]), ("twice", sign(SECRET, pr) * 2),
                       ("unicode", "sha256=é" + "0" * 63), ("of an empty body", sign(SECRET, b""))]:
        h = _hook("pull_request", pr, did(), X_Hub_Signature_256=sig)
        add(Case(f"webhook signature {label}", "POST", HOOK, h, pr, frozenset({401})))
    add(Case("webhook tampered body", "POST", HOOK, _hook("pull_request", pr, did()), pr.replace(b"Codertocat", b"Codertocaz"),
             frozenset({401})))
    # headers
    add(Case("webhook no event", "POST", HOOK, _hook("pull_request", pr, did(), X_GitHub_Event=None), pr))
    add(Case("webhook no delivery", "POST", HOOK, _hook("pull_request", pr, did(), X_GitHub_Delivery=None), pr))
    for bad in ["../../etc/passwd", "a" * 129, "with space", "semi;colon", "ünï", "%2e%2e", "a/b", "*", "\t"]:
        add(Case(f"webhook delivery id {bad[:12]!r}", "POST", HOOK, _hook("pull_request", pr, bad), pr))
    for ctype in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", "application/jsonx",
                  "json", ""]:
        add(Case(f"webhook content type {ctype!r}", "POST", HOOK, _hook("pull_request", pr, did(), Content_Type=ctype), pr,
                 frozenset({415})))
    # bodies that are not a JSON object
    for label, body in [("truncated", pr[:-10]), ("trailing garbage", pr + b"}"), ("NaN", b'{"a": NaN}'),
                        ("BOM", b"\xef\xbb\xbf" + pr), ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
                        ("array", b"[1,2]"), ("string", b'"x"'), ("number", b"1"), ("null", b"null"), ("empty", b""),
                        ("latin-1", '{"a": "é"}'.encode("latin-1")), ("lone surrogate", b'{"a": "\\ud800"}'),
                        ("huge number", b'{"a": 1' + b"0" * 5000 + b"}"), ("comment", b'{/*x*/"a":1}')]:
        expect = frozenset({400, 202})  # a lone surrogate escape is valid JSON to some parsers
        add(Case(f"webhook body {label}", "POST", HOOK, _hook("pull_request", body, did()), body,
                 expect if label == "lone surrogate" else frozenset({400}), refusal=label != "lone surrogate"))
    # signed payloads of every wrong shape: accepted (202) and recorded, never a 500
    shapes: list[tuple[str, str, str, Any]] = []
    for path in ["repository", "repository.full_name", "pull_request", "pull_request.title", "pull_request.labels",
                 "pull_request.head", "pull_request.head.repo", "pull_request.base.repo.full_name", "pull_request.draft",
                 "action", "installation", "installation.id", "sender"]:
        for value in [7, True, "x", [1], None, {"a": 1}]:
            shapes.append(("pull_request", "pull_request.opened.json", path, value))
    for path in ["repositories", "installation.id"]:
        for value in [7, True, "x", [1, None], {"full_name": "a/b"}]:
            shapes.append(("installation", "installation.created.json", path, value))
    for path in ["repositories_added", "repositories_removed"]:
        for value in [7, True, "x"]:
            shapes.append(("installation_repositories", "installation_repositories.added.json", path, value))
    for path in ["release", "release.prerelease", "release.tag_name", "release.name"]:
        for value in [None, 7, [1], {"a": 1}]:
            shapes.append(("release", "release.published.json", path, value))
    for event, name, path, value in shapes:
        payload = _fixture(name)
        obj = payload
        *parents, last = path.split(".")
        for p in parents:
            obj = obj[p] if isinstance(obj.get(p), dict) else obj.setdefault(p, {})
        obj[last] = value
        body = _compact(payload)
        add(Case(f"signed {event} with {path}={json.dumps(value)}", "POST", HOOK, _hook(event, body, did()), body,
                 frozenset({202}), refusal=False))
    for event in ["ping", "push", "issues", "../x", "x" * 300, "pull_request.opened"]:
        body = _compact(_fixture("ping.json"))
        add(Case(f"signed event name {event[:20]!r}", "POST", HOOK, _hook(event, body, did()), body,
                 frozenset({200, 202}), refusal=False))
    for method in ["GET", "PUT", "DELETE", "PATCH"]:
        add(Case(f"webhook {method}", method, HOOK, {}, b"", frozenset({405})))

    # -- the JSON API
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for raw in ["%C2%B2", "%D9%A1", "%EF%BC%91", "0", "1001", "-1", "+5", "1e3", "", "%20", "5%00", "9" * 30, "1.0",
                "0x10", "%F0%9F%92%A9", "1,2", "NaN"]:
        for path in ["/api/sessions", "/api/events"]:
            add(Case(f"{path} limit={raw!r}", "GET", f"{path}?limit={raw}", auth))
    for raw in ["garbage", "-", "+", "1-", "2e+", "99999999999999999999999-0", "1-2-3", "%C2%B2-0", "18446744073709551616-0",
                "(1-0", "1%20-0", "%00", "-1-0", "0x1-0", "%D9%A1-0", "1-%EF%BC%91"]:
        add(Case(f"log after={raw!r}", "GET", f"/api/sessions/{ctx.session}/log?after={raw}", auth))
    for sid in ["session_x", "%00", "..%2f..%2fetc", "%C3%A9", "a" * 1000, "%F0%9F%92%A9"]:
        add(Case(f"session id {sid[:12]!r}", "GET", f"/api/sessions/{sid}", auth, expect=frozenset({404})))
        add(Case(f"cancel id {sid[:12]!r}", "POST", f"/api/sessions/{sid}/cancel", auth, expect=frozenset({404})))
    add(Case("very long path", "GET", "/api/sessions/" + "a" * 5000, auth, expect=frozenset({414, 404})))
    for token in [None, "", "Bearer", "Bearer wrong", "Basic YWRtaW46eA==", f"bearer {ADMIN}", f"Bearer {ADMIN}x"]:
        h = {} if token is None else {"Authorization": token}
        for path in ["/api/sessions", "/api/events", "/api/routines"]:
            # a wrong token counts as a failed sign-in: past app.auth.MAX_FAILURES the address is throttled
            add(Case(f"{path} auth {token!r}", "GET", path, h, expect=frozenset({401, 429} if token else {401})))
    for path, method in [("/api/sessions", "POST"), ("/api/events", "DELETE"), ("/healthz", "POST")]:
        add(Case(f"{method} {path}", method, path, auth, expect=frozenset({405})))
    for path in ["/api/nope", "/api", "/v1/claude_code/routines", "/%00", "/.env", "/webhooks/github/x"]:
        add(Case(f"unknown path {path}", "GET", path, auth, expect=frozenset({404, 405})))

    # -- the API trigger
    fire = f"/v1/claude_code/routines/{ctx.trigger}/fire"
    good = {"Authorization": f"Bearer {ctx.token}", "anthropic-version": "2023-06-01", "anthropic-beta": BETA,
            "Content-Type": "application/json"}
    for tid in ["trig_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "nope", "trig_", "%00", "trig_" + "A" * 300]:
        add(Case(f"fire trigger {tid[:14]!r}", "POST", f"/v1/claude_code/routines/{tid}/fire", good, b"{}",
                 frozenset({404})))
    for label, header in [("missing", None), ("wrong", "Bearer sk-wrong"), ("no scheme", ctx.token),
                          ("other trigger's", f"Bearer {ctx.paused_token}"), ("empty", "Bearer ")]:
        h = {k: v for k, v in good.items() if k != "Authorization"}
        if header is not None:
            h["Authorization"] = header
        add(Case(f"fire token {label}", "POST", fire, h, b"{}", frozenset({401})))
    for label, over in [("no version", {"anthropic-version": None}), ("old version", {"anthropic-version": "2022-01-01"}),
                        ("no beta", {"anthropic-beta": None}), ("unknown beta", {"anthropic-beta": "x-2020"}),
                        ("empty beta", {"anthropic-beta": ""})]:
        h = {k: v for k, v in {**good, **over}.items() if v is not None}
        add(Case(f"fire {label}", "POST", fire, h, b"{}"))
    for label, body in [("not JSON", b"{"), ("array", b"[]"), ("text number", b'{"text": 5}'),
                        ("text object", b'{"text": {}}'), ("text list", b'{"text": ["a"]}'), ("string", b'"x"'),
                        ("deep", b"[" * 50_000 + b"]" * 50_000)]:
        add(Case(f"fire body {label}", "POST", fire, good, body))
    add(Case("fire body over 256 KB", "POST", fire, good, b'{"text": "' + b"x" * (256 * 1024) + b'"}', frozenset({413})))
    add(Case("fire a paused routine", "POST", f"/v1/claude_code/routines/{ctx.paused_trigger}/fire",
             {**good, "Authorization": f"Bearer {ctx.paused_token}"}, b"{}"))

    # -- framing, on a socket (bench/fuzz.py only)
    head = lambda extra: ("POST /webhooks/github HTTP/1.1\r\nHost: x\r\n" + "".join(  # noqa: E731
        f"{k}: {v}\r\n" for k, v in {**_hook("pull_request", pr, did()), **extra}.items()) + "\r\n").encode()
    add(Case("short body, half-closed", "POST", HOOK, expect=frozenset({400}),
             raw=head({"Content-Length": str(len(pr))}) + pr[:1000]))
    big = b'{"a": "' + b"x" * (25 * MB) + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + MB]), big[i:i + MB]) for i in range(0, len(big), MB))
    add(Case("chunked over 25 MB", "POST", HOOK, expect=frozenset({413}),
             raw=head({"Transfer-Encoding": "chunked"}) + chunks + b"0\r\n\r\n"))
    add(Case("announced over 25 MB", "POST", HOOK, expect=frozenset({413}),
             raw=head({"Content-Length": str(25 * MB + 1)}) + b"{}"))
    add(Case("bad Content-Length", "POST", HOOK, expect=frozenset({400}), raw=head({"Content-Length": "12x"}) + b"{}"))
    return cases
