"""Every Redis key Routinely writes, named here and nowhere else.

Each entry says who writes it, its shape and its lifetime, so nothing grows forever.
All keys share the `rly:` prefix; RQ's own keys (`rq:*`) belong to RQ and are named in
routinely/storage/jobs.py.
"""
from __future__ import annotations

import hashlib

P = "rly:"

DAY = 86_400
DELIVERY_TTL = 7 * DAY  # GitHub redelivers for days; ids are kept at least a week
EVENT_TTL = 7 * DAY  # event records and their payloads
SESSION_TTL = 30 * DAY  # session records, logs and listings
EVENTS_KEPT = 7 * DAY  # listing windows, trimmed by the start script at most once a second per process
SESSIONS_KEPT = 30 * DAY

# -- routines (writer: `routinely apply`, `schedule update`; no TTL: it is the configuration)
ROUTINES = P + "routines"  # string: JSON of the whole applied configuration
ROUTINES_VERSION = P + "routines:version"  # int, INCR on every apply


def delivery(guid: str) -> str:
    """string -> event id; SET NX by ingest; TTL DELIVERY_TTL. Dedup of X-GitHub-Delivery."""
    return f"{P}delivery:{guid}"


def event(event_id: str) -> str:
    """string: the event record, one JSON object (see routinely.records.events; records written
    before were hashes of the same fields); written by the start script; TTL EVENT_TTL.

    Fields: id, kind, received_at, trigger, delivery / event / repository / routine
    when known, duplicate (true/false), sessions, dropped, skipped (lists), and for a github
    delivery to a repository that routines watch for that event kind, `filter_fields`:
    JSON object {field: value} of every filter field those routines name, as routing read
    it (strings cut to catalog.RECORDED_CHARS) — what "why did this not fire" needs.
    """
    return f"{P}event:{event_id}"


EVENTS = P + "events"  # zset event id -> received ms (µs as the fraction, so close firings keep their order); trimmed to EVENTS_KEPT by the start script (once a second per process)


def payload(event_id: str) -> str:
    """string: raw webhook body a session runs with; when a session was made (the start step) or
    the delivery was dropped by admission or skipped, for a replay (routinely.firing.deliveries.keep_payload); TTL EVENT_TTL."""
    return f"{P}payload:{event_id}"


def session(session_id: str) -> str:
    """hash: the session record (routinely.records.sessions); written by ingest and the runner; TTL SESSION_TTL."""
    return f"{P}session:{session_id}"


SESSIONS = P + "sessions"  # zset session id -> created ms (µs as the fraction); trimmed to SESSIONS_KEPT


def sessions_of(routine_key: str) -> str:
    """zset session id -> created ms of one routine, by its key `ACCOUNT/NAME` (two accounts'
    routines of one name never share an index); written by the start script, trimmed to
    SESSIONS_KEPT, TTL SESSION_TTL from its newest session. Indexes named `...:routine:NAME`
    (no slash) are from before and no longer read."""
    return f"{P}sessions:routine:{routine_key}"


def session_log(session_id: str) -> str:
    """stream of log lines (field `l`); written by the runner; TTL SESSION_TTL."""
    return f"{P}log:{session_id}"


def session_transcript(session_id: str) -> str:
    """list of JSON transcript entries (routinely.records.transcript); written by the runner; TTL SESSION_TTL."""
    return f"{P}transcript:{session_id}"


def usage_day(scope: str, ident: str, local_date: str) -> str:
    """hash requests/tokens/cost_usd/unpriced_requests of one calendar day (the account's timezone), scope
    "account" (name), "routine" (key) or "account-models" (name; fields `MODEL|requests`, `MODEL|input_tokens`, …);
    HINCRBY by the model gateway (routinely.records.model_usage); TTL 40 days."""
    return f"{P}usage:{scope}:{ident}:{local_date}"


MODEL_METRICS = P + "usage:metrics"  # hash "tokens|routine|model|kind", "cost|routine|model", "stop|routine|reason" -> counter; by the gateway and runner; no TTL (Prometheus counters; fields bounded by routines x models)


def session_cancel(session_id: str) -> str:
    """string flag set by cancel, read by the runner; TTL 1 day."""
    return f"{P}cancel:{session_id}"


INSTALLATIONS = P + "installations"  # hash lower(owner/repo) -> installation id; kept in step with GitHub's installation events


def rate_window(scope: str, ident: str, per_seconds: int, window: int) -> str:
    """int counter of admitted firings in one fixed window; TTL the window's remainder."""
    return f"{P}rl:{scope}:{ident}:{per_seconds}:{window}"


def daily_count(account: str, local_date: str) -> str:
    """int counter of runs on one calendar day in the account's timezone; TTL 2 days."""
    return f"{P}cap:{account}:{local_date}"


def drops(routine_key: str) -> str:
    """hash reason -> count of dropped firings, plus `last_at`/`last_reason`/`retry_at_ms`; TTL SESSION_TTL."""
    return f"{P}drops:{routine_key}"


def trigger_tokens(trigger_id: str) -> str:
    """set of SHA-256 hex digests of one API trigger's live tokens; no TTL (revoked explicitly)."""
    return f"{P}trigger:{trigger_id}:tokens"


API_TRIGGERS = P + "api-triggers"  # hash trigger id -> routine key; written by `token create`, removed by revoke
API_TRIGGERS_LAST_USED = P + "api-triggers:last-used"  # hash trigger id -> ISO time its last firing reached the start step


def counter(name: str) -> str:
    """int counters of refusals at the door (e.g. bad signatures); no TTL, a fixed set of names."""
    return f"{P}count:{name}"


SCHEDULES = P + "schedules"  # hash "routine key|schedule id" -> next run (epoch s, stagger included, -1 spent); the scheduler's; fields of removed schedules are dropped each pass


def schedule_fired(routine_key: str, schedule_id: str, run_at: int) -> str:
    """string -> event id: claim of one scheduled run, taken by the start script, so racing schedulers fire it once; TTL 2 days."""
    return f"{P}fired:{routine_key}:{schedule_id}:{run_at}"


SCHEDULER_LEASE = P + "scheduler:lease"  # string holder id, SET NX PX; the one active scheduler

RUNNING = P + "running"  # zset session id -> last heartbeat ms; written by the runner, read by the reaper


def session_actions(session_id: str) -> str:
    """list of JSON actions ({tool, repo, number, url, status, at}): the github connector's writes,
    RPUSH by the worker serving the session (routinely.records.actions); TTL SESSION_TTL."""
    return f"{P}actions:{session_id}"


def session_reads(session_id: str) -> str:
    """int: how many reads the session's github connector made (INCR); TTL SESSION_TTL."""
    return f"{P}reads:{session_id}"


# -- who may fire, chains and schedules' memory (issue #16)
ROLE_TTL = 60  # a changed permission counts within a minute
CHAIN_TTL = DAY  # the webhook of a session's write arrives in seconds; redeliveries within hours


def role(repo: str, login: str) -> str:
    """string: the actor's repository role (GitHub's role_name, or "none"); written by the worker's role check
    (workers/role_check.py), read also at ingest (routinely.firing.gate); TTL ROLE_TTL."""
    return f"{P}role:{repo.lower()}:{login.lower()}"


def chain(repo: str, subject: str) -> str:
    """string "DEPTH SESSION_ID": the last session whose github connector wrote to this issue/PR
    number (or pushed this ref); written by routinely.firing.chain.record; TTL CHAIN_TTL."""
    return f"{P}chain:{repo.lower()}:{subject}"


# -- recovery of missed deliveries (issue #29; routinely.github.recovery, run by the leading scheduler)
RECOVERY = P + "recovery"  # hash: `origin_ms` (recovery never looks before it: set once, from the oldest recorded event or the first pass), `checked_ms` (every delivery GitHub made before it is settled), `last_pass_at`, `last_asked`, and counters `passes`, `asked`, `ask_failed`; no TTL (a fixed set of fields)


def recovery_asked(guid: str) -> str:
    """string "GITHUB_DELIVERY_ID ASKED_MS": recovery asked GitHub to redeliver this delivery
    (X-GitHub-Delivery guid); SET NX before asking, so no guid is asked for twice, and read
    with the event record to flag it `recovered`; TTL EVENT_TTL (as long as that event)."""
    return f"{P}recovery:asked:{guid}"


LAST_SCHEDULED_RUN = P + "last-scheduled-run"  # hash routine key -> ISO time of its latest scheduled run that made a session; the scheduler's; fields of removed routines dropped each pass


# -- the console's doors (app/auth.py): sign-in sessions, one-time sign-in codes, throttling
CONSOLE_SESSION_TTL = 12 * 3600  # a console sign-in lasts this long at most (sign-out ends it at once)
SIGN_IN_CODE_TTL = 600  # the link `routinely up` / `routinely sign-in` prints: one use, within 10 minutes
SIGN_IN_WINDOW = 60  # failed sign-ins are counted per client address over this many seconds


def digest(secret: str) -> str:
    """SHA-256 hex of a secret that Redis keeps only as its digest: a copy of Redis opens nothing."""
    return hashlib.sha256(secret.encode()).hexdigest()


def console_session(session_digest: str) -> str:
    """hash csrf / gen / at: one signed-in console session, by the digest of the random id its
    cookie holds; written by sign-in, deleted by sign-out; TTL CONSOLE_SESSION_TTL."""
    return f"{P}console:session:{session_digest}"


CONSOLE_SESSIONS = P + "console:sessions"  # zset session digest -> expiry ms; sign-in adds, trims the expired and evicts the oldest past app.auth.MAX_SESSIONS; sign-out removes; "sign out everywhere" deletes it whole


def sign_in_code(code_digest: str) -> str:
    """string "1": a one-time sign-in code, by its digest; SET by `routinely up` / `sign-in`,
    GETDEL by GET /login?code=; TTL SIGN_IN_CODE_TTL."""
    return f"{P}console:code:{code_digest}"


def sign_in_failures(address: str) -> str:
    """int: failed sign-ins (form, link, Bearer) from one client address (an IPv6 /64); INCR by
    app/auth.py; TTL SIGN_IN_WINDOW from the first failure."""
    return f"{P}console:failures:{address}"


# -- refusals at the door, idempotent fires (issue #29)
REFUSALS_KEPT = 1000  # the last refused deliveries kept (routinely.records.refusals)
REFUSALS = P + "refusals"  # stream of refused webhook deliveries (time in the entry id; delivery, event, reason, status, detail, address — never the body); XADD MAXLEN = REFUSALS_KEPT by the webhook door, one command per refusal; no TTL: capped by count
IDEMPOTENCY_TTL = DAY  # an Idempotency-Key answers its first call's session for 24 h
IDEMPOTENCY_PENDING_TTL = 60  # a claim whose firing never settled (a process died) frees the key after this


def idempotency(trigger_id: str, scope_digest: str) -> str:
    """string "P <body sha256>" while the first call fires, then "D <body sha256> <session id>";
    SET NX by POST …/fire with Idempotency-Key (routinely.firing.idempotency), by the digest of token and
    key (neither kept in clear); TTL IDEMPOTENCY_PENDING_TTL, then IDEMPOTENCY_TTL."""
    return f"{P}idem:{trigger_id}:{scope_digest}"


# -- stored secrets (issue #30; routinely.secrets.secret_store: `routinely secret`, the admin API, the worker)
def secret(scope: str, name: str) -> str:
    """hash `value` (AEAD: version, key id, nonce, ciphertext; never plaintext), `created_at`,
    `updated_at`, `last_used_at` (epoch s): one stored secret, by its scope (`routine:ACCOUNT/NAME`
    or `account:ACCOUNT`) and name; written by set/rotate, `last_used_at` by the worker; no TTL
    (configuration: removed by `secret rm`)."""
    return f"{P}secret:{scope}:{name}"


SECRETS = P + "secrets"  # set of "SCOPE NAME" for every stored secret (the listing); kept in step with `secret` by set/rm; no TTL


# -- concurrency groups (issue #29; routine_file.concurrency, the start script, routinely.firing.start.release)
GROUP_TTL = 2 * DAY  # past any session's timeout (24 h) and debounce (1 h); refreshed on every write


def concurrency_group(routine_key: str, group: str) -> str:
    """hash `active` (the session of the group admitted to RQ: held by its debounce, queued or
    running), `waiting` (the newest session held back until `active` ends, in no RQ list) and
    `queue` (their RQ queue's name), of one routine's rendered group (a group longer than 200
    characters by its digest); written by the start script, released by routinely.firing.start.release
    when `active` ends; TTL GROUP_TTL."""
    if len(group) > 200:
        group = "sha256:" + digest(group)
    return f"{P}group:{routine_key}:{group}"
