"""The routine file: parse and validate it whole, or reject it whole.

`parse_config` turns the file's mapping into plain, normalized data (defaults filled in)
and `build` turns that into typed objects with compiled filters. Every error names the
routine, the trigger and the filter, and says what to change.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import yaml

from filters import COMMAND_EVENTS, EVENT_KINDS, Filter, FilterError, compile_filters
from filters.command import NAME as COMMAND_NAME
from routinely import agent_spec, limits
from routinely.schedules import Schedule, ScheduleError, parse_schedule, stagger_seconds, zone

PLANS = {"pro": 5, "max": 15, "team": 25, "enterprise": 25}
DEFAULT_ROUTINE_LIMIT = {"events": 30, "per_seconds": 3600}  # the hosted service's defaults
DEFAULT_ACCOUNT_LIMIT = {"events": 100, "per_seconds": 3600}
ACTIONS = {
    "pull_request": {
        "assigned", "auto_merge_disabled", "auto_merge_enabled", "closed", "converted_to_draft",
        "demilestoned", "dequeued", "edited", "enqueued", "labeled", "locked", "milestoned",
        "opened", "ready_for_review", "reopened", "review_request_removed", "review_requested",
        "synchronize", "unassigned", "unlabeled", "unlocked",
    },
    "release": {"created", "deleted", "edited", "prereleased", "published", "released", "unpublished"},
    "issues": {
        "assigned", "closed", "deleted", "demilestoned", "edited", "labeled", "locked", "milestoned", "opened",
        "pinned", "reopened", "transferred", "typed", "unassigned", "unlabeled", "unlocked", "unpinned", "untyped",
    },
    "issue_comment": {"created", "deleted", "edited"},
    "pull_request_review": {"dismissed", "edited", "submitted"},
    "pull_request_review_comment": {"created", "deleted", "edited"},
    "workflow_run": {"completed", "in_progress", "requested"},
    "push": set(),  # push has no action: the event is `push`
}
ROLES = ("admin", "maintain", "write", "triage", "read")  # GitHub's repository roles (role_name)


class Network(StrEnum):
    """environment.network: what a session reaches beyond its doors (a str: stored specs are unchanged)."""

    FULL = "full"  # any public host, through the egress proxy
    ALLOWLIST = "allowlist"  # only allow_hosts, through the egress proxy
    NONE = "none"  # nothing: no egress proxy at all


NETWORKS = tuple(n.value for n in Network)
_ROUTINE_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?$")
_TOP = {"accounts", "connectors", "routines"}
_ACCOUNT_KEYS = {"name", "plan", "extra_usage", "timezone", "rate_limit"} | agent_spec.ACCOUNT_KEYS
_ROUTINE_KEYS = {
    "name", "account", "prompt", "repositories", "environment", "connectors", "branch_prefix",
    "allow_unrestricted_branch_pushes", "allow_tag_pushes", "timeout_minutes", "paused", "rate_limit", "triggers", "github",
} | agent_spec.ROUTINE_KEYS
_ENV_KEYS = {"network", "allow_hosts", "env", "setup", "limits", "maintenance", "cache", "cache_key_files", "cache_ttl_hours"}
# the built-in github connector's write tools; `github.writes` names a subset (default: all)
GITHUB_WRITES = ("add_issue_comment", "create_pull_request_review", "create_pull_request", "create_issue", "update_issue")
_GITHUB_KEYS = {"writes", "max_writes", "draft_prs", "allow_approve"}
BUILTIN_CONNECTORS = ("github",)


def _allow_entry(entry: str) -> bool:
    """An allow_hosts entry: a host name, `*.domain`, an IP literal or a CIDR range, each
    optionally with `:port` (IPv6 in brackets). The egress proxy reads the same shapes."""
    if _HOST.match(entry):
        return True
    text = entry
    if entry.startswith("["):
        text, _, rest = entry[1:].partition("]")
        if rest and not re.fullmatch(r":\d{1,5}", rest):
            return False
    elif entry.count(":") == 1:
        text, _, port = entry.partition(":")
        if not port.isdigit():
            return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


class ApplyError(ValueError):
    """The file cannot be applied; nothing was stored. str() names where and what."""


@dataclass(frozen=True)
class Account:
    name: str
    plan: str
    daily_cap: int
    extra_usage: bool
    timezone: str
    rate_limit: dict[str, int]
    daily_budget_usd: float | None = None  # model spend per calendar day; past it firings drop (daily_budget)


@dataclass(frozen=True)
class GithubTrigger:
    events: tuple[str, ...]
    filters: tuple[Filter, ...]
    command: str | None = None  # fires only on a comment starting with /command
    roles: frozenset[str] = frozenset()  # empty: anyone; else the actor's repository role must be one


@dataclass(frozen=True)
class Routine:
    key: str  # "account/name": unique across the store
    name: str
    account: str
    spec: dict[str, Any] = field(repr=False)  # normalized, as stored and snapshotted into sessions
    github: tuple[GithubTrigger, ...] = ()
    api: bool = False
    schedules: tuple[Schedule, ...] = ()

    @property
    def paused(self) -> bool:
        return bool(self.spec["paused"])

    @property
    def rate_limit(self) -> dict[str, int]:
        return self.spec["rate_limit"]

    @property
    def repositories(self) -> list[str]:
        return self.spec["repositories"]

    @property
    def stagger(self) -> int:
        return stagger_seconds(self.key)


def load_yaml(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ApplyError(f"the file is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ApplyError("the file must be a mapping with accounts, connectors and routines")
    return data


def _err(where: str, msg: str) -> ApplyError:
    return ApplyError(f"{where}: {msg}" if where else msg)


def _bool(value: Any, where: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise _err(where, f"{name} takes true or false, got {value!r}")
    return value


def _int(value: Any, where: str, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _err(where, f"{name} takes a whole number from {lo} to {hi}, got {value!r}")
    return value


def _minutes(value: Any, where: str) -> float | int:
    # fractions are allowed ("0.5" is thirty seconds); the floor keeps a typo from killing every run at once
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.05 <= value <= 24 * 60:
        raise _err(where, f"timeout_minutes takes a number of minutes from 0.05 to 1440, got {value!r}")
    return value


def _rate_limit(value: Any, default: dict[str, int], where: str) -> dict[str, int]:
    if value is None:
        return dict(default)
    if not isinstance(value, dict) or set(value) != {"events", "per_seconds"}:
        raise _err(where, f"rate_limit takes {{events: N, per_seconds: S}}, got {value!r}")
    return {
        "events": _int(value["events"], where, "rate_limit.events", 1, 1_000_000),
        "per_seconds": _int(value["per_seconds"], where, "rate_limit.per_seconds", 1, 31 * 86_400),
    }


def _unknown(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(mapping) - allowed
    if extra:
        raise _err(where, f"unknown key(s) {sorted(extra)}; allowed: {', '.join(sorted(allowed))}")


def parse_config(data: dict[str, Any], now: float | None) -> dict[str, Any]:
    """Validate a routine file's mapping; return it normalized. `now` None skips the
    future-time check of `at` schedules (for configurations already stored)."""
    _unknown(data, _TOP, "")
    accounts = _accounts(data.get("accounts") or [])
    connectors = _connectors(data.get("connectors") or {})
    raw_routines = data.get("routines") or []
    if not isinstance(raw_routines, list):
        raise ApplyError("routines must be a list")
    routines, seen = [], set()
    for index, raw in enumerate(raw_routines, start=1):
        routine = _routine(raw, index, accounts, connectors, now)
        key = f"{routine['account']}/{routine['name']}"
        if key in seen:
            raise ApplyError(f"routine {routine['name']!r} (account {routine['account']}): the name is used twice in this account")
        seen.add(key)
        routines.append(routine)
    return {"accounts": accounts, "connectors": connectors, "routines": routines}


def _accounts(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, list):
        raise ApplyError("accounts must be a list")
    out: dict[str, dict[str, Any]] = {}
    for index, acc in enumerate(raw, start=1):
        where = f"account {index}"
        if not isinstance(acc, dict):
            raise _err(where, "an account is a mapping with name, plan, timezone, …")
        name = acc.get("name")
        if not isinstance(name, str) or not _ACCOUNT_NAME.match(name):
            raise _err(where, f"name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
        where = f"account {name!r}"
        _unknown(acc, _ACCOUNT_KEYS, where)
        if name in out:
            raise _err(where, "declared twice")
        plan = acc.get("plan", "pro")
        if plan not in PLANS:
            raise _err(where, f"plan must be one of {', '.join(PLANS)}, got {plan!r}")
        tz = acc.get("timezone", "UTC")
        try:
            zone(tz)
        except ScheduleError as exc:
            raise _err(where, str(exc)) from None
        out[name] = {
            "name": name,
            "plan": plan,
            "extra_usage": _bool(acc.get("extra_usage", False), where, "extra_usage"),
            "timezone": tz,
            "rate_limit": _rate_limit(acc.get("rate_limit"), DEFAULT_ACCOUNT_LIMIT, where),
            **agent_spec.account_fields(acc, where, _err),
        }
    return out


def _connectors(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ApplyError("connectors must be a mapping of name to an MCP server (as in .mcp.json)")
    for name, server in raw.items():
        where = f"connector {name!r}"
        if name in BUILTIN_CONNECTORS:
            raise _err(where, f"{name} is the built-in connector every session gets; give yours another name")
        if not isinstance(server, dict):
            raise _err(where, "must be a mapping such as {type: http, url: …} or {command: …, args: […]}")
        if "command" in server:
            if not isinstance(server["command"], str) or not isinstance(server.get("args", []), list):
                raise _err(where, "command must be a string and args a list")
        elif server.get("type") in ("http", "sse"):
            if not isinstance(server.get("url"), str):
                raise _err(where, "an http or sse connector needs url")
        else:
            raise _err(where, "needs command (a local server) or type: http|sse with url")
        for part in ("env", "headers"):
            if part in server and not (isinstance(server[part], dict) and all(isinstance(v, str) for v in server[part].values())):
                raise _err(where, f"{part} must map names to strings")
    return raw


def _routine(raw: Any, index: int, accounts: dict, connectors: dict, now: float | None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ApplyError(f"routine {index}: a routine is a mapping with name, account, prompt, triggers, …")
    name = raw.get("name")
    if not isinstance(name, str) or not _ROUTINE_NAME.match(name):
        raise ApplyError(f"routine {index}: name must be 1-64 of a-z, 0-9 and '-', got {name!r}")
    account = raw.get("account")
    where = f"routine {name!r} (account {account})"
    _unknown(raw, _ROUTINE_KEYS, where)
    if account not in accounts:
        raise _err(where, f"account {account!r} is not declared under accounts")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _err(where, "prompt is required (the instructions the agent runs)")
    repos = raw.get("repositories") or []
    if not isinstance(repos, list) or not all(isinstance(r, str) and _REPO.match(r) for r in repos):
        raise _err(where, f"repositories must be a list of owner/name, got {repos!r}")
    if len({r.lower() for r in repos}) != len(repos):
        raise _err(where, "a repository is listed twice")
    wanted = raw.get("connectors")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(c, str) for c in wanted):
            raise _err(where, "connectors must be a list of connector names")
        missing = [c for c in wanted if c not in connectors]
        if missing:
            raise _err(where, f"connector(s) {missing} are not configured under connectors")
    prefix = raw.get("branch_prefix", "claude/")
    if not isinstance(prefix, str) or not re.match(r"^[A-Za-z0-9._/-]{1,100}$", prefix) or prefix.startswith(("refs/", "/", "-")):
        raise _err(where, f"branch_prefix must be a branch name prefix of letters, digits, '.', '_', '-' and '/' such as claude/, got {prefix!r}")
    spec = {
        "name": name,
        "account": account,
        "prompt": prompt,
        "repositories": list(repos),
        "environment": _environment(raw.get("environment") or {}, where),
        "connectors": wanted,
        "branch_prefix": prefix,
        "allow_unrestricted_branch_pushes": _bool(raw.get("allow_unrestricted_branch_pushes", False), where, "allow_unrestricted_branch_pushes"),
        "allow_tag_pushes": _bool(raw.get("allow_tag_pushes", False), where, "allow_tag_pushes"),
        "timeout_minutes": _minutes(raw.get("timeout_minutes", 60), where),
        "paused": _bool(raw.get("paused", False), where, "paused"),
        "rate_limit": _rate_limit(raw.get("rate_limit"), DEFAULT_ROUTINE_LIMIT, where),
        "github": github_policy(raw.get("github"), where),
        "triggers": [],
        **agent_spec.routine_fields(raw, where, _err),
    }
    triggers = raw.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        raise _err(where, "triggers must be a non-empty list of github, api or schedule triggers")
    tz = accounts[account]["timezone"]
    for t_index, trig in enumerate(triggers, start=1):
        spec["triggers"].append(_trigger(trig, f"{where}, trigger {t_index}", spec, tz, now))
    return spec


def github_policy(raw: Any, where: str = "") -> dict[str, Any]:
    """The `github:` block, normalized with its defaults (also for routines stored before it existed)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _err(where, "github takes {writes: [...], max_writes: N, draft_prs: true|false, allow_approve: true|false}")
    _unknown(raw, _GITHUB_KEYS, f"{where}, github" if where else "github")
    writes = raw.get("writes", list(GITHUB_WRITES))
    if not isinstance(writes, list) or not all(isinstance(w, str) for w in writes):
        raise _err(where, f"github.writes must be a list of write tools ({', '.join(GITHUB_WRITES)}), got {writes!r}")
    unknown = [w for w in writes if w not in GITHUB_WRITES]
    if unknown:
        raise _err(where, f"github.writes: {unknown} are not write tools of the github connector; known: {', '.join(GITHUB_WRITES)}")
    return {
        "writes": [w for w in GITHUB_WRITES if w in writes],
        "max_writes": _int(raw.get("max_writes", 20), where, "github.max_writes", 0, 1000),
        "draft_prs": _bool(raw.get("draft_prs", True), where, "github.draft_prs"),
        "allow_approve": _bool(raw.get("allow_approve", False), where, "github.allow_approve"),
    }


def _environment(env: Any, where: str) -> dict[str, Any]:
    if not isinstance(env, dict):
        raise _err(where, "environment must be a mapping (network, allow_hosts, env, setup, maintenance, cache, …)")
    _unknown(env, _ENV_KEYS, f"{where}, environment")
    network = env.get("network", Network.FULL)
    if network not in NETWORKS:
        raise _err(where, f"environment.network must be one of {', '.join(NETWORKS)}, got {network!r}")
    hosts = env.get("allow_hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) and _allow_entry(h) for h in hosts):
        raise _err(where, "environment.allow_hosts must be a list of host names (optionally *.domain or :port), "
                          f"IP addresses or CIDR ranges (10.0.0.0/8, [fd00::/8]:443), got {hosts!r}")
    if network == Network.ALLOWLIST and not hosts:
        raise _err(where, "environment.network allowlist needs at least one host in allow_hosts")
    if network == Network.NONE and hosts:
        raise _err(where, "environment.allow_hosts applies with network: allowlist (the hosts) or full (private hosts it may reach)")
    variables = env.get("env") or {}
    if not isinstance(variables, dict):
        raise _err(where, "environment.env must map variable names to values")
    clean = {}
    for k, v in variables.items():
        if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise _err(where, f"environment.env: {k!r} is not a valid variable name")
        if k.startswith("ROUTINELY_"):
            raise _err(where, f"environment.env: {k} is set by Routinely itself")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise _err(where, f"environment.env: {k} must be a string or number, got {v!r}")
        clean[k] = str(v)
    setup = env.get("setup")
    if setup is not None and not isinstance(setup, str):
        raise _err(where, "environment.setup must be a shell script (a string)")
    try:
        session_limits = limits.check(env.get("limits") or {}, "environment.limits")
    except ValueError as exc:
        raise _err(where, str(exc)) from None
    return {"network": Network(network), "allow_hosts": hosts, "env": clean, "setup": setup, "limits": session_limits,
            **_warm_start(env, where)}


def _warm_start(env: dict[str, Any], where: str) -> dict[str, Any]:
    """The setup cache's keys (CONTRACT "Warm start")."""
    maintenance = env.get("maintenance")
    if maintenance is not None and not isinstance(maintenance, str):
        raise _err(where, "environment.maintenance must be a shell script (a string), run instead of setup on a cache hit")
    files = env.get("cache_key_files")
    if files is not None and not (isinstance(files, list) and files and all(
            isinstance(f, str) and f and not f.startswith("/") and ".." not in f.split("/") for f in files)):
        raise _err(where, f"environment.cache_key_files must be a non-empty list of paths inside the checkouts "
                          f"(relative, no '..'), e.g. [requirements.txt], got {files!r}")
    ttl = env.get("cache_ttl_hours", 12)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 24 * 30:
        raise _err(where, f"environment.cache_ttl_hours takes a number of hours above 0, at most 720, got {ttl!r}")
    return {"maintenance": maintenance, "cache": _bool(env.get("cache", True), where, "environment.cache"),
            "cache_key_files": files, "cache_ttl_hours": ttl}


def _trigger(trig: Any, where: str, routine: dict[str, Any], tz: str, now: float | None) -> dict[str, Any]:
    if not isinstance(trig, dict) or len(trig) != 1 or next(iter(trig)) not in ("github", "api", "schedule"):
        raise _err(where, f"a trigger is one of github: {{…}}, api: {{}}, schedule: {{…}}, got {trig!r}")
    kind, body = next(iter(trig.items()))
    where = f"{where} ({kind})"
    if kind == "api":
        if body not in (None, {}):
            raise _err(where, "api takes no settings (write api: {}); tokens come from `routinely token create`")
        return {"api": {}}
    if kind == "schedule":
        if isinstance(body, dict) and isinstance(body.get("time"), int):
            raise _err(where, "time must be quoted, e.g. time: \"10:30\" (YAML reads 10:30 unquoted as a number)")
        try:
            schedule = parse_schedule(body, tz, now if now is not None else float("-inf"))
        except ScheduleError as exc:
            raise _err(where, str(exc)) from None
        spec = dict(schedule.spec)
        if schedule.at is not None:
            spec["at"] = schedule.at.replace(tzinfo=None).isoformat(timespec="minutes")
        return {"schedule": spec}
    if not isinstance(body, dict):
        raise _err(where, "github takes {events: [...], filters: [...], command: NAME, roles: [...]}")
    _unknown(body, {"events", "filters", "command", "roles"}, where)
    if not routine["repositories"]:
        raise _err(where, "a github trigger needs the routine's repositories: it fires only for their events")
    command = _command(body.get("command"), where)
    events = body.get("events", list(COMMAND_EVENTS) if command else None)
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise _err(where, "events must be a non-empty list such as [pull_request.opened, release.published]")
    for event in events:
        kind_name, _, action = event.partition(".")
        if kind_name not in EVENT_KINDS:
            raise _err(where, f"event {event!r} is not supported; routines start on {', '.join(sorted(EVENT_KINDS))} events")
        if action and action not in ACTIONS[kind_name]:
            known = ", ".join(sorted(ACTIONS[kind_name])) or f"none (write {kind_name})"
            raise _err(where, f"event {event!r}: {action!r} is not a {kind_name} action; known: {known}")
        if command and event not in COMMAND_EVENTS:
            raise _err(where, f"command fires on {' and '.join(COMMAND_EVENTS)} only, not on {event!r}")
    roles = body.get("roles")
    if roles is not None and (not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles)):
        raise _err(where, f"roles takes a non-empty list of {', '.join(ROLES)}, got {roles!r}")
    kinds = {e.partition(".")[0] for e in events}
    try:
        compile_filters(body.get("filters"), kinds)
    except FilterError as exc:
        raise _err(where, str(exc)) from None
    out: dict[str, Any] = {"events": list(events), "filters": list(body.get("filters") or [])}
    if command:
        out["command"] = command
    if roles:
        out["roles"] = list(dict.fromkeys(roles))
    return {"github": out}


def _command(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("/"):
        value = value[1:]  # `command: /fix` means what `command: fix` does
    if not isinstance(value, str) or not COMMAND_NAME.match(value):
        raise _err(where, f"command takes a word such as fix (letters, digits, '.', '_', '-'), got {value!r}")
    return value


def build_routine(spec: dict[str, Any], account_tz: str) -> Routine:
    """Typed routine with compiled filters and parsed schedules from a normalized spec."""
    github, schedules, api = [], [], False
    for trig in spec["triggers"]:
        if "github" in trig:
            body = trig["github"]
            kinds = {e.partition(".")[0] for e in body["events"]}
            github.append(GithubTrigger(tuple(body["events"]), compile_filters(body["filters"], kinds),
                                        body.get("command"), frozenset(body.get("roles") or ())))
        elif "schedule" in trig:
            schedules.append(parse_schedule(trig["schedule"], account_tz, float("-inf")))
        else:
            api = True
    return Routine(
        key=f"{spec['account']}/{spec['name']}",
        name=spec["name"],
        account=spec["account"],
        spec=spec,
        github=tuple(github),
        api=api,
        schedules=tuple(schedules),
    )


def build_account(spec: dict[str, Any]) -> Account:
    return Account(
        name=spec["name"],
        plan=spec["plan"],
        daily_cap=PLANS[spec["plan"]],
        extra_usage=spec["extra_usage"],
        timezone=spec["timezone"],
        rate_limit=spec["rate_limit"],
        daily_budget_usd=spec.get("daily_budget_usd"),
    )
