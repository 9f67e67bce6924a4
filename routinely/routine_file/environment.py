"""`environment:` — what a session reaches, its variables, setup, limits and warm start."""
from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ValidationInfo, model_validator

from routinely.routines import limits
from routinely.routine_file.errors import refuse
from routinely.routine_file.fields import Checked, Model, flag, script, secret_names


class Network(StrEnum):
    """environment.network: what a session reaches beyond its doors (a str: stored specs are unchanged)."""

    FULL = "full"  # any public host, through the egress proxy
    ALLOWLIST = "allowlist"  # only allow_hosts, through the egress proxy
    NONE = "none"  # nothing: no egress proxy at all


NETWORKS = tuple(n.value for n in Network)
_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def allow_entry(entry: str) -> bool:
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


class SessionLimits(Model):
    """environment.limits: what one session may use. A limit left out is the service's
    (ROUTINELY_SESSION_LIMITS), else the built-in one (routinely.routines.limits.Limits)."""

    sparse = True  # stored and shown as written: only the limits the routine sets
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None
    disk_mb: int | None = None
    disk_inodes: int | None = None  # files, folders and links the session may have on disk

    @classmethod
    def prepare(cls, data: Any, info: ValidationInfo) -> Any:
        # the one check the settings use too, so both word a bad limit alike
        given = {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else ({} if data is None else data)
        try:
            return limits.check(given, "environment.limits")
        except ValueError as exc:
            raise refuse(str(exc)) from None

    def given(self) -> dict[str, int | float]:
        """The limits this routine sets, by name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _network(value: Any) -> Any:
    if value not in NETWORKS:
        raise refuse(f"environment.network must be one of {', '.join(NETWORKS)}, got {value!r}")
    return value


def _hosts(value: Any) -> list[str]:
    hosts = value or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) and allow_entry(h) for h in hosts):
        raise refuse("environment.allow_hosts must be a list of host names (optionally *.domain or :port), "
                     f"IP addresses or CIDR ranges (10.0.0.0/8, [fd00::/8]:443), got {hosts!r}")
    return hosts


def _variables(value: Any) -> dict[str, str]:
    variables = value or {}
    if not isinstance(variables, dict):
        raise refuse("environment.env must map variable names to values")
    clean = {}
    for k, v in variables.items():
        if not isinstance(k, str) or not _VARIABLE.match(k):
            raise refuse(f"environment.env: {k!r} is not a valid variable name")
        if k.startswith("ROUTINELY_"):
            raise refuse(f"environment.env: {k} is set by Routinely itself")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise refuse(f"environment.env: {k} must be a string or number, got {v!r}")
        clean[k] = str(v)
    return clean


def _key_files(files: Any) -> list[str] | None:
    if files is not None and not (isinstance(files, list) and files and all(
            isinstance(f, str) and f and not f.startswith("/") and ".." not in f.split("/") for f in files)):
        raise refuse("environment.cache_key_files must be a non-empty list of paths inside the checkouts "
                      f"(relative, no '..'), e.g. [requirements.txt], got {files!r}")
    return files


def _ttl(ttl: Any) -> Any:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 24 * 30:
        raise refuse(f"environment.cache_ttl_hours takes a number of hours above 0, at most 720, got {ttl!r}")
    return ttl


_STRING_OR_NUMBER = {"anyOf": [{"type": "string"}, {"type": "number"}]}


class Environment(Model):
    """Where a session runs: its network policy, variables, setup and limits, and the warm
    start's keys (CONTRACT "Warm start")."""

    shape = "environment must be a mapping (network, allow_hosts, env, setup, maintenance, cache, …)"
    network: Annotated[Network, Checked(_network)] = Network.FULL
    allow_hosts: Annotated[list[str], Checked(_hosts)] = []
    env: Annotated[dict[str, str], Checked(_variables, {"additionalProperties": _STRING_OR_NUMBER})] = {}
    setup: Annotated[str | None, script("environment.setup must be a shell script (a string)")] = None
    limits: SessionLimits = SessionLimits()
    # -- warm start: setup's result is reused while its key holds
    maintenance: Annotated[str | None, script(
        "environment.maintenance must be a shell script (a string), run instead of setup on a cache hit")] = None
    cache: Annotated[bool, flag("environment.cache")] = True
    cache_key_files: Annotated[list[str] | None, Checked(_key_files)] = None  # None: lock files at the checkouts' roots
    cache_ttl_hours: Annotated[int | float, Checked(_ttl, {"exclusiveMinimum": 0, "maximum": 720})] = 12
    # in setup's (and maintenance's) environment only: gone before the agent starts; names from `secrets`
    setup_secrets: Annotated[list[str], secret_names("environment.setup_secrets")] = []

    @model_validator(mode="after")
    def _policy(self) -> "Environment":
        if self.network == Network.ALLOWLIST and not self.allow_hosts:
            raise refuse("environment.network allowlist needs at least one host in allow_hosts")
        if self.network == Network.NONE and self.allow_hosts:
            raise refuse("environment.allow_hosts applies with network: allowlist (the hosts) or full (private hosts it may reach)")
        return self
