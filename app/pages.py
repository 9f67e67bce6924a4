"""The console's pages: routines, a routine, sessions, a session, events, usage, sign-in.

Server-rendered (Jinja) from the same routinely/ functions as the JSON API and the CLI;
the only script is the session page's log follower and the local-time formatter, each
inline `<script>`/`<style>` carrying the response's CSP nonce (app.responses). Every form
that changes something posts its CSRF token (app.auth); sign-in redirects only to a path on
this site (`safe_next`).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Blueprint, Response, current_app, redirect, render_template, request
from markupsafe import Markup, escape

from app import auth
from app.responses import csp_nonce
from routinely.firing import admission, replay, usage
from routinely.routines import control
from routinely.records import events, refusals, routines_view, sessions, transcript
from routinely.secrets import secret_store
from routinely import when
from routinely.records import session_context
from routinely.routines.catalog import dump_yaml
from routinely.when import iso

bp = Blueprint("pages", __name__)
PAGE_SIZE = 50
EVENTS_PAGE = 100
REFUSED_SHOWN = 20  # the newest deliveries refused at the door, above the events
_OPEN = ("pages.login", "pages.login_post")


def _state():
    return current_app.extensions["routinely"]


@bp.before_request
def sign_in_first():
    if request.endpoint in _OPEN:
        return None
    why = auth.authorized()
    if why is None:
        return None
    if why[0] == "throttled":
        return _problem(429, _too_many(why[1]), {"Retry-After": str(why[1])})
    if why[0] == "csrf":
        return _problem(403, "The form's CSRF token is missing or stale: reload the page and try again.")
    return _login_page(safe_next(request.full_path.rstrip("?")), 401)


@bp.app_template_global()
def csrf_token() -> str:
    return auth.csrf_token()


bp.add_app_template_global(csp_nonce)


@bp.app_template_filter("wait")
def wait(seconds: int | float) -> str:
    """`6 h 50 min`: a drop's wait as its messages say it (routinely.firing.admission)."""
    return admission.wait_words(seconds)


@bp.app_template_filter("at")
def at(value: str | None, tz: str | None = None) -> Markup:
    """An ISO time as `<time>`: UTC (or `tz`) on the server, the reader's zone once JS runs."""
    if not value:
        return Markup("")
    ts = when.parse_iso(value)
    text = when.local_and_relative(ts, _state().settings.clock(), tz or "UTC")
    return Markup(f'<time datetime="{escape(value)}">{escape(text)}</time>')


@bp.app_template_filter("words")
def words(value: Any) -> str:
    """Booleans as a person writes them."""
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return "" if value is None else str(value)


def _problem(status: int, message: str, headers: dict[str, str] | None = None) -> tuple[str, int, dict[str, str]]:
    return render_template("problem.html", message=message, status=status), status, headers or {}


def _too_many(wait: int) -> str:
    return auth.too_many(wait).capitalize() + "."


def _login_page(target: str, status: int = 200, problem: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[str, int, dict[str, str]]:
    return render_template("login.html", next=target, problem=problem), status, headers or {}


@bp.get("/")
def routines_page():
    state = _state()
    rows = routines_view.listing(state.conn, state.catalog(), state.settings)
    return render_template("routines.html", rows=rows)


@bp.get("/routines/<account>/<name>")
def routine_page(account: str, name: str):
    return _routine(account, name)


def _routine(account: str, name: str, new_token: dict[str, str] | None = None, status: int = 200):
    """The routine page; `new_token` is shown on this response only (never stored in clear)."""
    state = _state()
    cat = state.catalog()
    routine = cat.routines.get(f"{account}/{name}")
    if routine is None:
        return _problem(404, f"No routine {account}/{name}.")
    row = routines_view.detail(state.conn, cat, state.settings, routine)
    page = _page_number()
    listed, more = sessions.page(state.conn, state.settings, routine.key, None, None, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    session_context.add_context(state.conn, listed, state.settings.clock())  # duration, PR/issue, API text
    definition = dump_yaml(row["definition"])  # a multi-line prompt as a `|` block
    return render_template("routine.html", r=row, definition=definition, sessions=listed, page=page, more=more,
                           new_token=new_token), status


def _page_number() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 10_000 else 1  # "²".isdigit() is true


def _act(account: str, name: str, action) -> Response | tuple[str, int, dict[str, str]]:
    try:
        action(f"{account}/{name}")
    except control.Refused as exc:
        return _problem(exc.status, str(exc))
    return redirect(safe_next(request.form.get("next")) if request.form.get("next") else f"/routines/{account}/{name}", 303)


@bp.post("/routines/<account>/<name>/run")
def run_page(account: str, name: str):
    state = _state()
    try:
        made = control.run_now(state.settings, state.conn, f"{account}/{name}", request.form.get("text") or None)
    except control.Refused as exc:
        return _problem(exc.status, str(exc))
    return redirect(f"/sessions/{made['id']}", 303)


@bp.post("/routines/<account>/<name>/pause")
def pause_page(account: str, name: str):
    return _act(account, name, lambda ref: control.set_paused(_state().conn, ref, True))


@bp.post("/routines/<account>/<name>/resume")
def resume_page(account: str, name: str):
    return _act(account, name, lambda ref: control.set_paused(_state().conn, ref, False))


@bp.post("/routines/<account>/<name>/tokens")
def create_token_page(account: str, name: str):
    state = _state()
    try:
        made = control.create_token(state.conn, state.settings, f"{account}/{name}")
    except control.Refused as exc:
        return _problem(exc.status, str(exc))
    # shown once, on this response only: never stored in clear, never in a redirect URL
    return _routine(account, name, new_token=made, status=201)


@bp.post("/routines/<account>/<name>/tokens/<trigger_id>/revoke")
def revoke_token_page(account: str, name: str, trigger_id: str):
    return _act(account, name, lambda ref: control.revoke_token(_state().conn, ref, trigger_id))


@bp.get("/sessions")
def sessions_page():
    state = _state()
    routine = request.args.get("routine") or None
    status = request.args.get("status") if request.args.get("status") in sessions.STATUSES else None
    kind = request.args.get("kind") if request.args.get("kind") in ("github", "api", "schedule", "manual") else None
    page = _page_number()
    try:
        rows, more = sessions.page(state.conn, state.settings, routine, status, kind, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    except control.Refused as exc:
        return _problem(exc.status, str(exc))
    session_context.add_context(state.conn, rows, state.settings.clock())  # duration, PR/issue, API text
    names = sorted(state.catalog().routines)  # ACCOUNT/NAME: the per-routine index's own key
    return render_template("sessions.html", rows=rows, more=more, page=page, names=names,
                           f={"routine": routine or "", "status": status or "", "kind": kind or ""},
                           statuses=sessions.STATUSES)


@bp.get("/sessions/<session_id>")
def session_page(session_id: str):
    state = _state()
    session = sessions.load(state.conn, session_id)
    if session is None:
        return render_template("missing.html", session_id=session_id), 404
    found = sessions.shown(state.conn, state.settings, session)
    session_context.add_context(state.conn, [found], state.settings.clock())
    found["prompt"] = session_context.prompt_of(state.conn, state.catalog(), session)
    return render_template("session.html", s=found, final=found["status"] in sessions.FINAL,
                           steps=transcript.steps(transcript.read(state.conn, session_id)))


@bp.get("/sessions/<session_id>/transcript")
def session_transcript(session_id: str):
    """The transcript and usage part of the session page, for its live refresh."""
    state = _state()
    found = sessions.get(state.conn, state.settings, session_id)
    if found is None:
        return "", 404
    return render_template("_transcript.html", s=found, steps=transcript.steps(transcript.read(state.conn, session_id)))


@bp.post("/sessions/<session_id>/cancel")
def cancel_page(session_id: str):
    state = _state()
    outcome = sessions.cancel(state.conn, session_id, iso(state.settings.clock()))
    if outcome == "unknown":
        return render_template("missing.html", session_id=session_id), 404
    if outcome == "finished":
        return _problem(409, f"Session {session_id} has already finished.")
    return redirect(f"/sessions/{session_id}", 303)


@bp.get("/events")
def events_page():
    state = _state()
    page = _page_number()
    rows = events.explained(state.conn, state.catalog(), EVENTS_PAGE + 1, (page - 1) * EVENTS_PAGE)
    refused = refusals.listing(state.conn, REFUSED_SHOWN) if page == 1 else []  # refused at the door (no event)
    return render_template("events.html", rows=rows[:EVENTS_PAGE], page=page, more=len(rows) > EVENTS_PAGE,
                           refused=refused, refusal_line=refusals.line)


@bp.post("/events/<event_id>/replay")
def replay_page(event_id: str):
    """The events page's Replay button beside a drop: one routine, `force` when ticked."""
    state = _state()
    try:
        done = replay.replay(state.settings, state.conn, event_id, request.form.get("routine") or None,
                             request.form.get("force") == "1", state.starter)
    except replay.ReplayRefused as exc:
        return _problem(exc.status, str(exc))
    if done["sessions"]:
        return redirect(f"/sessions/{done['sessions'][0]['id']}", 303)
    return redirect("/events", 303)  # dropped or skipped again: the new event says why, at the top


@bp.get("/secrets")
def secrets_page(problem: str | None = None, status: int = 200):
    """The store, write-only: names, scopes and dates; a form that sets a value, never shows one."""
    state = _state()
    cat = state.catalog()
    scopes = [str(secret_store.Scope.account(a)) for a in sorted(cat.accounts)] + \
        [str(secret_store.Scope.routine(k)) for k in sorted(cat.routines)]
    store = secret_store.SecretStore.of(state.settings, state.conn, need_key=False)
    return render_template("secrets.html", rows=store.list(), scopes=scopes, problem=problem,
                           key=bool(state.settings.secrets_key), no_key=secret_store.no_key_line(state.settings)), status


@bp.post("/secrets")
def set_secret_page():
    return _secret_form(lambda state, name, scope: secret_store.SecretStore.of(state.settings, state.conn).set(
        name, request.form.get("value", ""), scope))


@bp.post("/secrets/remove")
def remove_secret_page():
    return _secret_form(lambda state, name, scope: secret_store.SecretStore(state.conn, None).remove(name, scope))


def _secret_form(act) -> Any:
    """The form's name and scope to `act`; its refusal (never holding a value) shown on the page."""
    try:
        act(_state(), request.form.get("name", ""), secret_store.Scope.parse(request.form.get("scope", "")))
    except secret_store.SecretError as exc:
        return secrets_page(str(exc), 400)
    return redirect("/secrets", 303)


@bp.get("/usage")
def usage_page():
    state = _state()
    return render_template("usage.html", accounts=usage.usage(state.conn, state.catalog(), state.settings.clock()))


@bp.get("/login")
def login():
    """The sign-in form, or the one-time link `routinely up` / `routinely sign-in` prints."""
    target = safe_next(request.args.get("next"))
    if "token" in request.args:  # never checked: a token in a URL stays in the browser's history and logs
        return _login_page(target, 400, "The admin token is never taken in a URL: paste it here, or open the "
                                        "one-time link `routinely sign-in` prints.")
    if auth.signed_in():
        return redirect(target, 303)
    code = request.args.get("code")
    if code is None:
        return _login_page(target)
    wait = auth.throttled()
    if wait:
        return _login_page(target, 429, _too_many(wait), {"Retry-After": str(wait)})
    if not auth.code_ok(code):
        auth.failed()
        return _login_page(target, 401, "That sign-in link was used already or has expired: "
                                        "`routinely sign-in` prints a new one.")
    auth.sign_in()
    return redirect(target, 303)


@bp.post("/login")
def login_post():
    target = safe_next(request.form.get("next"))
    wait = auth.throttled()
    if wait:
        return _login_page(target, 429, _too_many(wait), {"Retry-After": str(wait)})
    if not auth.csrf_ok():
        return _login_page(target, 403, "The form was stale; try again.")
    if not auth.token_ok(request.form.get("token", "")):
        auth.failed()
        return _login_page(target, 401, "That token is not ROUTINELY_ADMIN_TOKEN.")
    auth.sign_in()
    return redirect(target, 303)


@bp.get("/logout")
def logout():
    return render_template("logout.html")


@bp.post("/logout")
def logout_post():
    """Sign out this browser, or (`everywhere`) every console session there is."""
    if request.form.get("everywhere"):
        auth.sign_out_everywhere()
    else:
        auth.sign_out()
    return redirect("/login", 303)


def safe_next(target: str | None) -> str:
    """`target` when it is a path on this site, else "/": no open redirect through sign-in.

    A browser drops tab, CR and LF from a URL and reads a backslash as `/`, so `/%09/evil.example`
    (a tab once decoded) would leave the site: the path must start with one `/`, and neither
    it nor its percent-decoded forms may hold `//`, a backslash, whitespace or a control character.
    """
    if not target:
        return "/"
    seen = target
    for _ in range(4):  # each decoding is checked: a double-encoded `%252F` as well
        if not seen.startswith("/") or "//" in seen or not all(0x21 <= ord(c) <= 0x7E and c != "\\" for c in seen):
            return "/"
        decoded = unquote(seen)
        if decoded == seen:
            break
        seen = decoded
    else:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"
