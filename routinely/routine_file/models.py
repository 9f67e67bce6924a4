"""The routine file's records: accounts, connectors, routines, and the file that holds them.

One class per block of the file; each field is one declaration with its default and its
check. Validation with `context={"now": …}` (routinely.routine_file.parse_config) also
checks what spans blocks: a routine's account and connectors are declared, and its
schedules take the account's timezone.
"""
from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from routinely.routines import services
from routinely.routines.agent_spec import DEFAULT_IDLE_MINUTES
from routinely.routine_file.agent import Agent, Budget
from routinely.routine_file.concurrency import Concurrency
from routinely.routine_file.environment import Environment
from routinely.routine_file.errors import ACCOUNT_NAME, ROUTINE_NAME, refuse
from routinely.routine_file.fields import Checked, Model, flag, null_is, number, secret_names, whole
from routinely.routine_file.triggers import GithubTrigger, Trigger
from routinely.routines.schedules import Schedule, ScheduleError, stagger_seconds, zone

PLANS = {"pro": 5, "max": 15, "team": 25, "enterprise": 25}  # runs a day
PLAN_NAMES = tuple(PLANS)
# the built-in github connector's write tools; `github.writes` names a subset (default: all)
GITHUB_WRITES = ("add_issue_comment", "create_pull_request_review", "create_pull_request", "create_issue", "update_issue")
BUILTIN_CONNECTORS = ("github",)
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_BRANCH_PREFIX = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")


class RateLimit(Model):
    """At most `events` firings in each fixed window of `per_seconds`; past it, dropped."""

    events: Annotated[int, whole("rate_limit.events", 1, 1_000_000)]
    per_seconds: Annotated[int, whole("rate_limit.per_seconds", 1, 31 * 86_400)]

    @classmethod
    def prepare(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict) or set(value) != {"events", "per_seconds"}:
            raise refuse(f"rate_limit takes {{events: N, per_seconds: S}}, got {value!r}")
        return value


ROUTINE_LIMIT = RateLimit(events=30, per_seconds=3600)  # the hosted service's defaults
ACCOUNT_LIMIT = RateLimit(events=100, per_seconds=3600)


def _writes(writes: Any) -> list[str]:
    if not isinstance(writes, list) or not all(isinstance(w, str) for w in writes):
        raise refuse(f"github.writes must be a list of write tools ({', '.join(GITHUB_WRITES)}), got {writes!r}")
    unknown = [w for w in writes if w not in GITHUB_WRITES]
    if unknown:
        raise refuse(f"github.writes: {unknown} are not write tools of the github connector; known: {', '.join(GITHUB_WRITES)}")
    return [w for w in GITHUB_WRITES if w in writes]


class GithubPolicy(Model):
    """`github:` — what the built-in github connector lets a session do."""

    shape = "github takes {writes: [...], max_writes: N, draft_prs: true|false, allow_approve: true|false}"
    writes: Annotated[list[Literal[GITHUB_WRITES]], Checked(_writes)] = list(GITHUB_WRITES)
    max_writes: Annotated[int, whole("github.max_writes", 0, 1000)] = 20  # per session
    draft_prs: Annotated[bool, flag("github.draft_prs")] = True  # PRs the agent opens are drafts
    allow_approve: Annotated[bool, flag("github.allow_approve")] = False  # a review with event APPROVE is refused


class Connector(Model):
    """An MCP server routines may use, in .mcp.json's own shape (other keys are kept as written)."""

    model_config = ConfigDict(extra="allow")
    sparse = True
    shape = "must be a mapping such as {type: http, url: …} or {command: …, args: […]}"
    type: str | None = None  # http | sse (a url) — or a local server's command
    url: str | None = None
    headers: dict[str, str] | None = None
    command: str | None = None
    args: list[Any] | None = None
    env: dict[str, str] | None = None

    @classmethod
    def prepare(cls, server: Any, info: ValidationInfo) -> Any:
        if not isinstance(server, dict):
            raise refuse(cls.shape)
        if "command" in server:
            if not isinstance(server["command"], str) or not isinstance(server.get("args", []), list):
                raise refuse("command must be a string and args a list")
        elif server.get("type") in ("http", "sse"):
            if not isinstance(server.get("url"), str):
                raise refuse("an http or sse connector needs url")
        else:
            raise refuse("needs command (a local server) or type: http|sse with url")
        for part in ("env", "headers"):
            if part in server and not (isinstance(server[part], dict) and all(isinstance(v, str) for v in server[part].values())):
                raise refuse(f"{part} must map names to strings")
        return server

    def entry(self) -> dict[str, Any]:
        """The server's .mcp.json entry, as written (`${VAR}` not expanded yet)."""
        return self.model_dump(mode="json")


def _account_name(name: Any) -> str:
    if not isinstance(name, str) or not ACCOUNT_NAME.match(name):
        raise refuse(f"name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    return name


def _plan(plan: Any) -> Any:
    if plan not in PLANS:
        raise refuse(f"plan must be one of {', '.join(PLANS)}, got {plan!r}")
    return plan


def _timezone(name: Any) -> Any:
    try:
        zone(name)
    except ScheduleError as exc:
        raise refuse(str(exc)) from None
    return name


class Account(Model):
    """Who routines run for: the daily cap's plan and day, and the account-wide limits."""

    shape = "an account is a mapping with name, plan, timezone, …"
    null_is_empty = False
    name: Annotated[str, Checked(_account_name)]
    plan: Annotated[Literal[PLAN_NAMES], Checked(_plan)] = "pro"
    extra_usage: Annotated[bool, flag("extra_usage")] = False  # past the daily cap: run on, metered
    timezone: Annotated[str, Checked(_timezone)] = "UTC"  # the daily cap's day; the schedules' default
    rate_limit: Annotated[RateLimit, null_is(ACCOUNT_LIMIT)] = ACCOUNT_LIMIT
    # model spend per calendar day; past it new firings drop (daily_budget)
    daily_budget_usd: Annotated[float | int | None, number("daily_budget_usd", 0, 1e9, optional=True)] = None

    @cached_property  # a copy may set its own (model_copy(update=…)): replays lift the cap
    def daily_cap(self) -> int:
        return PLANS[self.plan]


def _routine_name(name: Any) -> str:
    if not isinstance(name, str) or not ROUTINE_NAME.match(name):
        raise refuse(f"name must be 1-64 of a-z, 0-9 and '-', got {name!r}")
    return name


def _account_ref(account: Any) -> str:
    if not isinstance(account, str):
        raise refuse(f"account {account!r} is not declared under accounts")
    return account


def _prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise refuse("prompt is required (the instructions the agent runs)")
    return prompt


def _repositories(repos: Any) -> list[str]:
    repos = repos or []
    if not isinstance(repos, list) or not all(isinstance(r, str) and _REPO.match(r) for r in repos):
        raise refuse(f"repositories must be a list of owner/name, got {repos!r}")
    if len({r.lower() for r in repos}) != len(repos):
        raise refuse("a repository is listed twice")
    return repos


def _connector_names(wanted: Any) -> list[str] | None:
    if wanted is not None and (not isinstance(wanted, list) or not all(isinstance(c, str) for c in wanted)):
        raise refuse("connectors must be a list of connector names")
    return wanted


def _services(raw: Any) -> dict[str, Any]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise refuse('services must be a mapping of name to {url, secret, header}, e.g. sentry: {url: "https://sentry.io", '
                     'secret: SENTRY_TOKEN, header: "Authorization: Bearer {secret}"}')
    try:
        services.parse(raw)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    return raw


def _branch_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not _BRANCH_PREFIX.match(prefix) or prefix.startswith(("refs/", "/", "-")):
        raise refuse("branch_prefix must be a branch name prefix of letters, digits, '.', '_', '-' and '/' such as "
                      f"claude/, got {prefix!r}")
    return prefix


def _triggers(triggers: Any) -> list[Any]:
    if not isinstance(triggers, list) or not triggers:
        raise refuse("triggers must be a non-empty list of github, api or schedule triggers")
    return triggers


class Routine(Model):
    """A saved bundle of prompt, repositories, environment, connectors and triggers, owned
    by one account. `key` (account/name) is unique across the store.

    `github` is the routine's github triggers as routing matches them; the `github:` block
    of the file (the connector's policy) is `github_policy`.
    """

    shape = "a routine is a mapping with name, account, prompt, triggers, …"
    null_is_empty = False
    name: Annotated[str, Checked(_routine_name)]  # unique per account
    account: Annotated[str, Checked(_account_ref)]
    prompt: Annotated[str, Checked(_prompt)]
    repositories: Annotated[list[str], Checked(_repositories)] = []
    environment: Environment = Environment()
    connectors: Annotated[list[str] | None, Checked(_connector_names)] = None  # None: every configured one
    branch_prefix: Annotated[str, Checked(_branch_prefix)] = "claude/"  # pushes only to branches under it
    allow_unrestricted_branch_pushes: Annotated[bool, flag("allow_unrestricted_branch_pushes")] = False
    allow_tag_pushes: Annotated[bool, flag("allow_tag_pushes")] = False
    # fractions are allowed ("0.5" is thirty seconds); the floor keeps a typo from killing every run at once
    timeout_minutes: Annotated[float | int, number(
        "timeout_minutes", 0.05, 24 * 60, "timeout_minutes takes a number of minutes from 0.05 to 1440, got {value!r}")] = 60
    paused: Annotated[bool, flag("paused")] = False  # triggers are recorded as skipped
    rate_limit: Annotated[RateLimit, null_is(ROUTINE_LIMIT)] = ROUTINE_LIMIT
    github_policy: GithubPolicy = Field(GithubPolicy(), alias="github")
    agent: Agent | None = None  # None: ROUTINELY_AGENT
    budget: Budget = Budget(max_cost_usd=None, max_tokens=None)
    # no model request and no log line this long: timed_out ("stalled")
    idle_timeout_minutes: Annotated[float | int, number("idle_timeout_minutes", 0.05, 24 * 60)] = DEFAULT_IDLE_MINUTES
    concurrency: Concurrency | None = None  # one session per group at a time; a github trigger's own wins
    secrets: Annotated[list[str], secret_names("secrets")] = []  # stored secrets it may use; never values
    # credential doors: the session gets NAME_URL, a door that adds the secret as a header
    services: Annotated[dict[str, dict[str, Any]], Checked(_services, {"additionalProperties": {
        "type": "object", "required": ["url", "secret", "header"], "additionalProperties": False,
        "properties": {"url": {"type": "string"}, "secret": {"type": "string"}, "header": {"type": "string"},
                       "paths": {"type": "array", "items": {"type": "string"}}}}})] = {}
    secrets_as_env: Annotated[list[str], secret_names("secrets_as_env")] = []  # held as variables: the page says so
    triggers: Annotated[list[Trigger], Checked(_triggers)]

    @classmethod
    def prepare(cls, data: Any, info: ValidationInfo) -> Any:
        data = super().prepare(data, info)
        account = ((info.context or {}).get("accounts") or {}).get(data["account"]) if isinstance(data["account"], str) else None
        if account is not None and isinstance(data["triggers"], list):  # schedules default to the account's timezone
            data = {**data, "triggers": [
                {"schedule": {**t["schedule"], "timezone": account.timezone}}
                if isinstance(t, dict) and len(t) == 1 and isinstance(t.get("schedule"), dict) and "timezone" not in t["schedule"]
                else t for t in data["triggers"]]}
        return data

    @field_validator("account")
    @classmethod
    def _declared(cls, account: str, info: ValidationInfo) -> str:
        accounts = (info.context or {}).get("accounts")
        if accounts is not None and account not in accounts:
            raise refuse(f"account {account!r} is not declared under accounts")
        return account

    @field_validator("connectors")
    @classmethod
    def _configured(cls, wanted: list[str] | None, info: ValidationInfo) -> list[str] | None:
        configured = (info.context or {}).get("connectors")
        missing = [c for c in wanted or () if configured is not None and c not in configured]
        if missing:
            raise refuse(f"connector(s) {missing} are not configured under connectors")
        return wanted

    @model_validator(mode="after")
    def _github_needs_repositories(self) -> "Routine":
        for index, trig in enumerate(self.triggers, start=1):
            if trig.github is not None and not self.repositories:
                raise refuse("a github trigger needs the routine's repositories: it fires only for their events",
                              at=f"trigger {index} (github)")
        used = {"environment.setup_secrets": self.environment.setup_secrets, "secrets_as_env": self.secrets_as_env,
                **{f"services.{name}.secret": [decl["secret"]] for name, decl in self.services.items()}}
        for where, names in used.items():
            unnamed = [n for n in names if n not in self.secrets]
            if unnamed:
                raise refuse(f"{where} uses {', '.join(unnamed)}, which secrets: does not name: add it to secrets")
        if self.concurrency is not None:  # over the event kinds of the github triggers without a group of their own
            self.concurrency.check({e.partition(".")[0] for t in self.triggers if t.github and not t.github.concurrency
                                    for e in t.github.events})
        return self

    @cached_property
    def key(self) -> str:
        return f"{self.account}/{self.name}"

    @cached_property
    def github(self) -> tuple[GithubTrigger, ...]:
        return tuple(t.github.compiled for t in self.triggers if t.github is not None)

    @cached_property
    def api(self) -> bool:
        """Whether it has an api trigger (fired with a token)."""
        return any(t.api is not None for t in self.triggers)

    @cached_property
    def schedules(self) -> tuple[Schedule, ...]:
        return tuple(t.schedule.compiled for t in self.triggers if t.schedule is not None)

    @property
    def stagger(self) -> int:
        return stagger_seconds(self.key)


def _a_list(message: str) -> Checked:
    def check(value: Any) -> list[Any]:
        value = value or []
        if not isinstance(value, list):
            raise refuse(message)
        return value
    return Checked(check)


def _connectors(raw: Any) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise refuse("connectors must be a mapping of name to an MCP server (as in .mcp.json)")
    for name in raw:
        if name in BUILTIN_CONNECTORS:
            raise refuse(f"connector {name!r}: {name} is the built-in connector every session gets; give yours another name",
                         whole=True)
    return raw


class RoutineFile(Model):
    """A whole routine file (`routinely apply FILE`), applied all-or-nothing."""

    shape = "the file must be a mapping with accounts, connectors and routines"
    null_is_empty = False
    accounts: Annotated[list[Account], _a_list("accounts must be a list")] = []
    connectors: Annotated[dict[str, Connector], Checked(_connectors)] = {}  # MCP servers routines may use
    routines: Annotated[list[Routine], _a_list("routines must be a list")] = []

    @classmethod
    def prepare(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and isinstance(data.get("accounts"), dict):  # stored before the file's shape was kept
            data = {**data, "accounts": list(data["accounts"].values())}
        return super().prepare(data, info)

    @field_validator("accounts")
    @classmethod
    def _once(cls, accounts: list[Account]) -> list[Account]:
        seen: set[str] = set()
        for account in accounts:
            if account.name in seen:
                raise refuse(f"account {account.name!r}: declared twice", whole=True)
            seen.add(account.name)
        return accounts

    @field_validator("routines", mode="before")
    @classmethod
    def _declared_so_far(cls, routines: Any, info: ValidationInfo) -> Any:
        if info.context is not None:  # what each routine's own checks look up (Routine)
            info.context["accounts"] = {a.name: a for a in info.data.get("accounts", [])}
            info.context["connectors"] = set(info.data.get("connectors", {}))
        return routines

    @field_validator("routines")
    @classmethod
    def _unique(cls, routines: list[Routine]) -> list[Routine]:
        seen: set[str] = set()
        for routine in routines:
            if routine.key in seen:
                raise refuse(f"routine {routine.name!r} (account {routine.account}): the name is used twice in this account",
                             whole=True)
            seen.add(routine.key)
        return routines
