"""Secrets that routines use: stored encrypted in Redis, listed without their values, read by the
worker alone.

A secret is a name and a value in a scope: a routine (`routine:ACCOUNT/NAME`) or an account
(`account:ACCOUNT`); a routine's session finds a name in its own scope first, then its account's.
Values are sealed with AES-256-GCM under a key Redis never holds (ROUTINELY_SECRETS_KEY, or the
data dir's `secrets_key` that `routinely up` makes). The associated data binds the scope and the
name, so a sealed value copied to another key does not open. A sealed value names its key by
a short id; with ROUTINELY_SECRETS_KEY_PREVIOUS set, values sealed under that key still open,
and `rotate()` seals them again under the current one.

Who calls what: `set`, `list`, `remove`, `rotate` — the CLI (`routinely secret`) and the admin
API; `for_routine` — the worker, at a session's start (it records `last_used_at`). Nothing here
ever puts a value in an error, a listing or a log line.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from routinely.storage import keys
from routinely.config import SECRETS_KEY_FILE, Settings
from routinely.when import iso

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ROUTINE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,100}/[a-z0-9-]{1,64}")
ACCOUNT = re.compile(r"[A-Za-z0-9_.-]{1,100}")
MAX_VALUE_BYTES = 64 * 1024
VERSION = b"\x01"
KEY_ID_BYTES = 4
NONCE_BYTES = 12
_HEAD = len(VERSION) + KEY_ID_BYTES + NONCE_BYTES


class SecretError(ValueError):
    """A refusal or a missing key; str() is the one line to show (never a value)."""


class NoKey(SecretError):
    """The service has no secrets key (ROUTINELY_SECRETS_KEY or the data dir's key file)."""


def no_key_line(settings: Settings) -> str:
    return (f"no secrets key: set ROUTINELY_SECRETS_KEY (32 random bytes, base64), or run `routinely up` once "
            f"(it makes {settings.data_dir / SECRETS_KEY_FILE})")


@dataclass(frozen=True)
class Scope:
    kind: str  # routine | account
    ident: str  # ACCOUNT/NAME | ACCOUNT

    def __str__(self) -> str:
        return f"{self.kind}:{self.ident}"

    @classmethod
    def routine(cls, key: str) -> "Scope":
        if not ROUTINE_KEY.fullmatch(key):
            raise SecretError(f"a routine scope is ACCOUNT/NAME, got {key[:120]!r}")
        return cls("routine", key)

    @classmethod
    def account(cls, name: str) -> "Scope":
        if not ACCOUNT.fullmatch(name):
            raise SecretError(f"an account scope is an account's name, got {name[:120]!r}")
        return cls("account", name)

    @classmethod
    def parse(cls, text: str) -> "Scope":
        kind, _, ident = text.partition(":")
        if kind == "routine":
            return cls.routine(ident)
        if kind == "account":
            return cls.account(ident)
        raise SecretError(f"a scope is routine:ACCOUNT/NAME or account:ACCOUNT, got {text[:120]!r}")


def scope_of(accounts: Iterable[str], find_routine: Callable[[str], Any], routine: str | None = None,
             account: str | None = None) -> Scope:
    """The scope `routinely secret` and the API mean: `routine` (ACCOUNT/NAME, or a name the
    applied routines resolve), `account`, or — with neither — the only account there is.
    `find_routine` is Catalog.find (LookupError for an unknown name)."""
    if routine and account:
        raise SecretError("name --routine or --account, not both")
    if routine:
        if "/" in routine:
            return Scope.routine(routine)
        try:
            return Scope.routine(find_routine(routine).key)
        except LookupError as exc:
            raise SecretError(str(exc).strip('"')) from None
    if account:
        return Scope.account(account)
    accounts = sorted(accounts)
    if len(accounts) != 1:
        raise SecretError("name the scope: --routine ROUTINE or --account ACCOUNT"
                          + (f" (accounts: {', '.join(accounts)})" if accounts else ""))
    return Scope.account(accounts[0])


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise SecretError(f"a secret's name is letters, digits and _ (not first a digit), at most 128, got {name[:140]!r}")
    return name


def key_id(key: bytes) -> bytes:
    """Which key sealed a value: a short digest of it (names the key, reveals nothing usable)."""
    return hashlib.sha256(b"routinely secrets key\0" + key).digest()[:KEY_ID_BYTES]


def _aad(scope: Scope, name: str) -> bytes:
    return b"routinely secret\0" + str(scope).encode() + b"\0" + name.encode()


class Sealer:
    """AES-256-GCM under the current key; opens values sealed under the previous one too."""

    def __init__(self, key: bytes, previous: bytes | None = None) -> None:
        self._current = (key_id(key), AESGCM(key))
        self._keys = {key_id(key): AESGCM(key)}
        if previous is not None:
            self._keys.setdefault(key_id(previous), AESGCM(previous))

    def seal(self, scope: Scope, name: str, value: str) -> bytes:
        kid, aead = self._current
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + kid + nonce + aead.encrypt(nonce, value.encode(), _aad(scope, name))

    def open(self, scope: Scope, name: str, sealed: bytes) -> str:
        aead = self._keys.get(sealed[1:1 + KEY_ID_BYTES]) if sealed[:1] == VERSION else None
        if aead is None:
            raise SecretError(f"secret {name} ({scope}) was sealed under a key this service does not have: "
                              "set ROUTINELY_SECRETS_KEY_PREVIOUS to the key it had, then `routinely secret rotate`")
        try:
            return aead.decrypt(sealed[_HEAD - NONCE_BYTES:_HEAD], sealed[_HEAD:], _aad(scope, name)).decode()
        except InvalidTag:
            raise SecretError(f"secret {name} ({scope}) does not open: it was changed in Redis or moved "
                              "from another name or scope; set it again") from None

    def is_current(self, sealed: bytes) -> bool:
        return sealed[1:1 + KEY_ID_BYTES] == self._current[0]


class SecretStore:
    """The stored secrets. `sealer` None: only `list` and `remove` work (they need no key)."""

    def __init__(self, conn: redis.Redis, sealer: Sealer | None, clock: Callable[[], float] = time.time) -> None:
        self.conn, self.sealer, self.clock = conn, sealer, clock

    @classmethod
    def of(cls, settings: Settings, conn: redis.Redis, need_key: bool = True) -> "SecretStore":
        """Raises SecretError (no key) when `need_key` and the service has none."""
        if settings.secrets_key is None:
            if need_key:
                raise NoKey(no_key_line(settings))
            return cls(conn, None, settings.clock)
        return cls(conn, Sealer(settings.secrets_key, settings.secrets_key_previous), settings.clock)

    def _sealer(self) -> Sealer:
        if self.sealer is None:
            raise NoKey("no secrets key: set ROUTINELY_SECRETS_KEY (32 random bytes, base64)")
        return self.sealer

    # -- the operator's side
    def set(self, name: str, value: str, scope: Scope) -> bool:
        """Store (or replace) a value; True when it is new. Raises SecretError."""
        check_name(name)
        if not value:
            raise SecretError(f"secret {name}: the value is empty")
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise SecretError(f"secret {name}: the value is longer than {MAX_VALUE_BYTES // 1024} KiB")
        sealed = self._sealer().seal(scope, name, value)
        now = str(round(self.clock(), 3))
        key = keys.secret(str(scope), name)
        pipe = self.conn.pipeline(transaction=True)
        pipe.hsetnx(key, "created_at", now)
        pipe.hset(key, mapping={"value": sealed, "updated_at": now})
        pipe.sadd(keys.SECRETS, f"{scope} {name}")
        return bool(pipe.execute()[0])

    def list(self, scope: Scope | None = None) -> list[dict[str, Any]]:
        """Every secret's name, scope and dates (ISO, UTC; `last_used_at` null until a session
        used it), by scope then name. Never a value."""
        members = sorted(m.decode() for m in self.conn.smembers(keys.SECRETS))
        found = [m.split(" ", 1) for m in members]
        if scope is not None:
            found = [(s, n) for s, n in found if s == str(scope)]
        pipe = self.conn.pipeline(transaction=False)
        for s, n in found:
            pipe.hmget(keys.secret(s, n), "created_at", "updated_at", "last_used_at")
        rows = []
        for (s, n), (created, updated, used) in zip(found, pipe.execute()):
            if created is None:
                continue  # removed between the two reads
            rows.append({"name": n, "scope": s, "created_at": iso(float(created)),
                         "updated_at": iso(float(updated or created)),
                         "last_used_at": iso(float(used)) if used else None})
        return rows

    def remove(self, name: str, scope: Scope) -> bool:
        pipe = self.conn.pipeline(transaction=True)
        pipe.delete(keys.secret(str(scope), check_name(name)))
        pipe.srem(keys.SECRETS, f"{scope} {name}")
        return bool(pipe.execute()[0])

    def rotate(self) -> tuple[int, int]:
        """Seal every value under the current key: (re-sealed, already current). Raises
        SecretError naming a value no key opens (the others are done first)."""
        sealer, done, current, failed = self._sealer(), 0, 0, []
        for member in sorted(m.decode() for m in self.conn.smembers(keys.SECRETS)):
            s, n = member.split(" ", 1)
            scope, key = Scope.parse(s), keys.secret(s, n)
            sealed = self.conn.hget(key, "value")
            if sealed is None:
                continue
            if sealer.is_current(sealed):
                current += 1
                continue
            try:
                value = sealer.open(scope, n, sealed)
            except SecretError as exc:
                failed.append(str(exc))
                continue
            self._replace(key, sealed, sealer.seal(scope, n, value))
            done += 1
        if failed:
            raise SecretError(f"{done} re-sealed; {len(failed)} could not be: {failed[0]}")
        return done, current

    def _replace(self, key: str, old: bytes, new: bytes) -> None:
        """Swap the sealed value only if nobody set another meanwhile."""
        with self.conn.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if pipe.hget(key, "value") != old:
                    return
                pipe.multi()
                pipe.hset(key, "value", new)
                pipe.execute()
            except redis.WatchError:
                pass

    # -- the worker's side
    def get(self, name: str, scope: Scope) -> str | None:
        """One value, or None; records the use. Raises SecretError when it does not open."""
        key = keys.secret(str(scope), check_name(name))
        sealed = self.conn.hget(key, "value")
        if sealed is None:
            return None
        value = self._sealer().open(scope, name, sealed)
        self.conn.hset(key, "last_used_at", str(round(self.clock(), 3)))
        return value

    def for_routine(self, names: Iterable[str], routine_key: str, account: str) -> dict[str, str]:
        """The values of `names` for a session of the routine: its own scope first, then its
        account's. Raises SecretError naming every one that is not stored (and how to store it)."""
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        scopes = [Scope.routine(routine_key), Scope.account(account)]
        pipe = self.conn.pipeline(transaction=False)
        for name in names:
            for scope in scopes:
                pipe.hget(keys.secret(str(scope), check_name(name)), "value")
        sealed = pipe.execute()
        values, missing, used = {}, [], []
        for i, name in enumerate(names):
            found = next(((scope, s) for scope, s in zip(scopes, sealed[2 * i:2 * i + 2]) if s is not None), None)
            if found is None:
                missing.append(name)
                continue
            values[name] = self._sealer().open(found[0], name, found[1])
            used.append(keys.secret(str(found[0]), name))
        if missing:
            raise SecretError(f"the routine uses secrets that are not stored: {', '.join(missing)} "
                              f"(`routinely secret set {missing[0]} --routine {routine_key}` or --account {account})")
        now = str(round(self.clock(), 3))
        pipe = self.conn.pipeline(transaction=False)
        for key in used:
            pipe.hset(key, "last_used_at", now)
        pipe.execute()
        return values


def missing(conn: redis.Redis, names: Iterable[str], routine_key: str, account: str) -> list[str]:
    """The names neither the routine's scope nor its account's holds (no key needed: `apply`
    refuses a routine that names one)."""
    names = list(dict.fromkeys(names))
    if not names:
        return []
    stored = {m.decode() for m in conn.smembers(keys.SECRETS)}
    return [n for n in names if f"{Scope.routine(routine_key)} {n}" not in stored and f"{Scope.account(account)} {n}" not in stored]


def for_session(settings: Settings, conn: redis.Redis, names: Iterable[str], routine_key: str,
                account: str) -> dict[str, str]:
    """The worker's one call at a session's start: the values of the routine's `secrets`
    (name -> value; {} when it names none, without needing a key). Raises SecretError (NoKey,
    a secret not stored, one that does not open) with the line for the session's log."""
    names = list(names or ())
    if not names:
        return {}
    return SecretStore.of(settings, conn).for_routine(names, routine_key, account)
