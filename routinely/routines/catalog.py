"""The applied configuration, compiled and indexed, and the one place it is stored.

Each process keeps one compiled Catalog and rebuilds it only when the stored version
moves; the version travels with every firing into the start script, which refuses a
stale one, so a delivery is never routed by an outdated configuration.
"""
from __future__ import annotations

import threading
from typing import Any

import orjson
import redis
import yaml

from filters import Fields, matches_all, parse_command, wants_event
from routinely.storage import keys
from routinely.secrets import secret_store
from routinely.routine_file import (Account, ApplyError, Connector, GithubTrigger, Routine, RoutineFile, parse_config,
                                    parse_stored)


RECORDED_CHARS = 1024


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return value[:RECORDED_CHARS]
    if isinstance(value, list):
        return [_short(v) for v in value[:100]]
    return value


class Catalog:
    """Accounts, connectors and routines of one stored version, indexed for routing."""

    def __init__(self, config: RoutineFile, version: int) -> None:
        self.version = version
        self.config = config
        self.connectors: dict[str, Connector] = config.connectors
        self.accounts: dict[str, Account] = {a.name: a for a in config.accounts}
        self.routines: dict[str, Routine] = {}
        # (lower(owner/repo), "kind" or "kind.action") -> routines with a github trigger on it
        self._github: dict[tuple[str, str], list[Routine]] = {}
        # (lower(owner/repo), kind) -> the filter fields routines watching it for that kind name
        self._watched: dict[tuple[str, str], set[str]] = {}
        for routine in config.routines:
            self.routines[routine.key] = routine
            wanted = {event for trig in routine.github for event in trig.events}
            for repo in routine.repositories:
                for event in wanted:
                    self._github.setdefault((repo.lower(), event), []).append(routine)
                for trig in routine.github:
                    for event in trig.events:
                        kind = event.partition(".")[0]
                        self._watched.setdefault((repo.lower(), kind), set()).update(
                            f.field for f in trig.filters if kind in f.kinds)
                        if trig.command:  # the explanation names the command a comment started with
                            self._watched[(repo.lower(), kind)].add("body")

    @classmethod
    def empty(cls) -> "Catalog":
        return cls(RoutineFile(), 0)

    def route(self, kind: str, action: str | None, repo: str, payload: dict[str, Any],
              record: dict[str, Any] | None = None) -> list[Routine]:
        """Routines with a github trigger matching this event (paused ones included)."""
        return [routine for routine, _ in self.matches(kind, action, repo, payload, record)]

    def matches(self, kind: str, action: str | None, repo: str, payload: dict[str, Any],
                record: dict[str, Any] | None = None) -> list[tuple[Routine, list[GithubTrigger]]]:
        """Each routine with a github trigger matching this event, with those triggers.

        Cost depends on the routines indexed for this repository and event, not on the
        size of the store; fields are read from the payload only when a filter needs them.
        With `record`, it is filled with the value of every filter field named by the
        routines watching this repository for events of this kind (what explains a
        delivery that did not fire); strings are cut to RECORDED_CHARS. Who may fire
        (roles, chain depth) is decided after this, by routinely.firing.gate.
        """
        repo = repo.lower()
        fields = Fields(kind, payload)
        if record is not None:
            for name in sorted(self._watched.get((repo, kind), ())):
                record[name] = _short(fields[name])
        candidates = list(self._github.get((repo, kind), ()))
        if action:
            for routine in self._github.get((repo, f"{kind}.{action}"), ()):
                if not any(routine is c for c in candidates):
                    candidates.append(routine)
        if not candidates:
            return []
        event = f"{kind}.{action}" if action else kind
        matched = []
        for routine in candidates:
            triggers = [trig for trig in routine.github
                        if wants_event(trig.events, kind, event)
                        and (trig.command is None or _command(fields) == trig.command)
                        and matches_all(trig.filters, fields, kind)]
            if triggers:
                matched.append((routine, triggers))
        return matched

    def find(self, ref: str) -> Routine:
        """A routine by `account/name`, or by name when only one account has it.

        Raises LookupError with the line to show.
        """
        if ref in self.routines:
            return self.routines[ref]
        named = [r for r in self.routines.values() if r.name == ref]
        if len(named) == 1:
            return named[0]
        if named:
            raise LookupError(f"routine {ref!r} exists in several accounts; name it as ACCOUNT/{ref}")
        raise LookupError(f"no routine named {ref!r}; `routinely list` shows the applied routines")


def _command(fields: Fields) -> str | None:
    """The /command a comment starts with (command triggers are validated to comment events)."""
    found = parse_command(fields["body"])
    return found[0] if found else None


def save(conn: redis.Redis, config: RoutineFile) -> int:
    """Store a validated configuration whole (one MULTI, as JSON in the file's shape with
    its defaults filled in) and return its new version."""
    pipe = conn.pipeline(transaction=True)
    pipe.set(keys.ROUTINES, orjson.dumps(config.to_file()))
    pipe.incr(keys.ROUTINES_VERSION)
    return int(pipe.execute()[1])


def as_file(config: RoutineFile) -> dict[str, Any]:
    """A configuration as a routine file's mapping (to change and apply again)."""
    return config.to_file()


class _FileDumper(yaml.SafeDumper):
    """safe_dump, but a multi-line string (a prompt) is a `|` block as a person writes it."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML itself falls back to quoting when a block cannot hold the text exactly (trailing
    # spaces on a line, tabs, control characters): the value always reads back the same
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_FileDumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """A routine file's mapping (or a part of one) as YAML text, keys in the file's order."""
    return yaml.dump(data, Dumper=_FileDumper, sort_keys=False, allow_unicode=True)


def apply(conn: redis.Redis, data: dict[str, Any], now: float | None) -> tuple[Catalog, dict[str, Any]]:
    """Validate a routine file and store it all-or-nothing. Raises ApplyError; nothing is stored then.

    `now` None skips the future-time check of `at` schedules (re-applying a stored one). Returns the new catalog and which routine keys were added, changed and removed (and, under
    `accounts`, which account names).
    """
    config = parse_config(data, now)
    for routine in config.routines:
        unstored = secret_store.missing(conn, routine.secrets, routine.key, routine.account)
        if unstored:
            raise ApplyError(f"routine {routine.name!r} (account {routine.account}): secrets {', '.join(unstored)} are not "
                             f"stored: `routinely secret set {unstored[0]} --routine {routine.key}` (or --account "
                             f"{routine.account}) first")
    before = load(conn)
    version = save(conn, config)
    after = Catalog(config, version)
    diff = _diff({k: r.to_file() for k, r in before.routines.items()}, {k: r.to_file() for k, r in after.routines.items()})
    diff["accounts"] = _diff({k: a.to_file() for k, a in before.accounts.items()},
                             {k: a.to_file() for k, a in after.accounts.items()})
    return after, diff


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {"added": sorted(set(new) - set(old)), "changed": sorted(k for k in set(new) & set(old) if new[k] != old[k]),
            "removed": sorted(set(old) - set(new))}


def load(conn: redis.Redis) -> Catalog:
    pipe = conn.pipeline(transaction=True)
    pipe.get(keys.ROUTINES)
    pipe.get(keys.ROUTINES_VERSION)
    raw, version = pipe.execute()
    if raw is None:
        return Catalog.empty()
    return Catalog(parse_stored(raw), int(version or 0))


class CatalogCache:
    """One compiled catalog per process, replaced when a firing finds it stale."""

    def __init__(self) -> None:
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()

    def get(self, conn: redis.Redis) -> Catalog:
        catalog = self._catalog
        if catalog is None:
            catalog = self.reload(conn)
        return catalog

    def current(self, conn: redis.Redis) -> Catalog:
        """The catalog of the version stored now (one GET; a reload when it moved)."""
        catalog = self._catalog
        if catalog is None or int(conn.get(keys.ROUTINES_VERSION) or 0) != catalog.version:
            catalog = self.reload(conn)
        return catalog

    def reload(self, conn: redis.Redis) -> Catalog:
        with self._lock:
            self._catalog = load(conn)
            return self._catalog
