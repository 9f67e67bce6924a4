"""Recovery of missed deliveries: GitHub's record of the App's deliveries against ours, and a
redelivery asked for each one we never recorded.

What crosses this border: GitHub's App webhook API (`GET /app/hook/deliveries`, paged by the
Link header's cursor; `POST /app/hook/deliveries/{id}/attempts`, both with the App's JWT) and
Redis — `keys.delivery(guid)` (the receiver's claim: the delivery was recorded), and what
recovery owns: `keys.RECOVERY` (its marks and counters) and `keys.recovery_asked(guid)`.

GitHub lists every attempt; a redelivery is another attempt with the same guid (the
`X-GitHub-Delivery` header). A guid is *missed* when no attempt of it was recorded here —
it failed (not 2xx: the service was down, Redis was, the signature did not hold) or was
answered without a record — and recovery asks GitHub to redeliver it once: the claim
`recovery_asked(guid)` is set NX before asking, so a guid is never asked for twice, even by
two racing passes, and an event recorded under a guid that was asked for is `recovered`.
Recovery never looks further back than GitHub's retention (3 days) nor than its origin:
the oldest event this Redis recorded when recovery first ran (or that moment), so a new or
emptied Redis does not replay GitHub's last three days.

`recover()` is one pass (the CLI's `routinely deliveries recover`); `Recoverer` is the
leading scheduler's: a pass at start, then every ROUTINELY_RECOVER_MINUTES.
"""
from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TextIO
from urllib.parse import parse_qs, urlsplit

import httpx
import redis
from githubkit import GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import GitHubException, RequestFailed

from routinely.storage import keys
from routinely.config import Settings
from routinely.github.github_auth import app_client
from routinely.when import iso, parse_iso

RETENTION_SECONDS = 3 * keys.DAY - 600  # GitHub redelivers deliveries of the last 3 days; a margin for the ask itself
OVERLAP_SECONDS = 300  # a pass looks this far behind the last one: deliveries still in flight were not listed yet
RETRY_SECONDS = 60  # the next pass, after one that was full, failed or was cut short
PER_PAGE = 100  # GitHub's largest page
MAX_PAGES = 1000  # a cursor that never ends stops here (100,000 attempts: far more than 3 days hold)
NEVER_RECORDED = frozenset({"ping"})  # answered at the door, never recorded: nothing to recover
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


class RecoveryError(Exception):
    """GitHub's deliveries could not be listed; str() is one line without any secret."""


@dataclass(frozen=True)
class Attempt:
    """One attempt at a delivery as GitHub lists it."""

    id: int  # GitHub's id of this attempt: what a redelivery is asked of
    guid: str  # X-GitHub-Delivery, shared by a delivery's redeliveries
    delivered_at: float
    redelivery: bool
    status_code: int  # 0: no HTTP answer (refused, timed out)
    event: str  # "pull_request.opened", or the kind when there is no action


@dataclass
class Missed:
    """A delivery never recorded here: what recovery asks (or would ask) GitHub to redeliver."""

    guid: str
    redeliver_id: int  # its newest attempt
    event: str
    first_at: float  # its first attempt we saw
    last_at: float  # its newest attempt
    status_code: int  # of its newest attempt
    attempts: int

    @property
    def reason(self) -> str:
        if self.status_code == 0:
            return "failed (no answer)"
        if not 200 <= self.status_code < 300:
            return f"failed (HTTP {self.status_code})"
        return f"never recorded (answered {self.status_code})"

    def to_json(self) -> dict[str, Any]:
        return {"guid": self.guid, "redeliver_id": self.redeliver_id, "event": self.event,
                "delivered_at": iso(self.first_at), "status_code": self.status_code, "attempts": self.attempts,
                "reason": self.reason}


@dataclass
class Pass:
    """What one pass found and did."""

    since: float
    until: float
    dry_run: bool = False
    listed: int = 0  # attempts GitHub listed in the window
    deliveries: int = 0  # distinct guids among them
    missed: list[Missed] = field(default_factory=list)  # every missed delivery in the window, oldest first
    asked: list[Missed] = field(default_factory=list)  # redeliveries asked for (a dry run: would be)
    failed: list[tuple[Missed, str]] = field(default_factory=list)  # asks GitHub refused, and why
    left: int = 0  # missed ones this pass did not ask for (past ROUTINELY_RECOVER_MAX, or stopped): the next pass will

    def line(self) -> str:
        """The pass's log line."""
        verb = "would ask" if self.dry_run else "asked"
        out = (f"recovery {iso(self.since)}..{iso(self.until)}: GitHub listed {self.listed} attempts of "
               f"{self.deliveries} deliveries; {len(self.missed)} never recorded, {verb} {len(self.asked)} redeliveries")
        if self.failed:
            out += f", {len(self.failed)} refused ({self.failed[0][1]}…)"
        if self.left:
            out += f", {self.left} left for the next pass"
        return out

    def to_json(self) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until), "dry_run": self.dry_run, "listed": self.listed,
                "deliveries": self.deliveries, "missed": len(self.missed), "asked": [m.to_json() for m in self.asked],
                "failed": [{**m.to_json(), "error": why} for m, why in self.failed], "left": self.left}


def missed(attempts: Iterable[Attempt], recorded: set[str], asked: set[str]) -> list[Missed]:
    """The deliveries among `attempts` to redeliver, oldest first: grouped by guid, those
    never recorded (`recorded`: guids the receiver claimed) and never asked for before
    (`asked`), pings left out (the receiver answers them without a record)."""
    by_guid: dict[str, list[Attempt]] = {}
    for a in attempts:
        by_guid.setdefault(a.guid, []).append(a)
    out: list[tuple[float, int, Missed]] = []
    for guid, tries in by_guid.items():
        if guid in recorded or guid in asked or tries[0].event.partition(".")[0] in NEVER_RECORDED:
            continue
        tries.sort(key=lambda a: (a.delivered_at, a.id))
        newest = tries[-1]
        out.append((tries[0].delivered_at, tries[0].id, Missed(
            guid=guid, redeliver_id=newest.id, event=newest.event, first_at=tries[0].delivered_at,
            last_at=newest.delivered_at, status_code=newest.status_code, attempts=len(tries))))
    out.sort(key=lambda row: row[:2])  # GitHub's times are whole seconds; its ids grow
    return [m for _, _, m in out]


def attempt(item: Any) -> Attempt | None:
    """One item of GitHub's listing, or None when it is not one (a shape we cannot read)."""
    try:
        event = str(item["event"])
        action = item.get("action")
        return Attempt(id=int(item["id"]), guid=str(item["guid"]), delivered_at=parse_iso(str(item["delivered_at"])),
                       redelivery=bool(item.get("redelivery")), status_code=int(item.get("status_code") or 0),
                       event=f"{event}.{action}" if action else event)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def listed_since(gh: GitHub, since: float) -> list[Attempt]:
    """Every attempt GitHub delivered at or after `since`, newest first, page after page.

    Raises RecoveryError when GitHub refuses or cannot be reached."""
    out: list[Attempt] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        try:
            resp = gh.rest.apps.list_webhook_deliveries(per_page=PER_PAGE, **({"cursor": cursor} if cursor else {}))
            page = resp.json()
        except RequestFailed as exc:
            raise RecoveryError(f"GitHub refused the App's deliveries (HTTP {exc.response.status_code}): check "
                                "GITHUB_APP_ID and the private key") from None
        except (GitHubException, httpx.HTTPError, ValueError) as exc:
            raise RecoveryError(f"GitHub's deliveries could not be listed ({type(exc).__name__})") from None
        items = [a for a in map(attempt, page if isinstance(page, list) else []) if a is not None]
        out += [a for a in items if a.delivered_at >= since]
        cursor = next_cursor(resp.headers.get("link", ""))
        # newest first: a page reaching back before `since` is the last one needed
        if not items or min(a.delivered_at for a in items) < since or cursor is None or cursor in seen:
            return out
        seen.add(cursor)
    return out


def next_cursor(link: str) -> str | None:
    """The `cursor` of the Link header's rel="next" URL, or None on the last page."""
    m = _NEXT.search(link)
    if not m:
        return None
    return (parse_qs(urlsplit(m.group(1)).query).get("cursor") or [None])[0]


def origin(conn: redis.Redis, now: float, keep: bool) -> float:
    """How far back recovery may ever look: set once (when `keep`), to the oldest event this
    Redis recorded or, with none, to now."""
    got = conn.hget(keys.RECOVERY, "origin_ms")
    if got is not None:
        return int(got) / 1000
    oldest = conn.zrange(keys.EVENTS, 0, 0, withscores=True)
    at = float(int(min(oldest[0][1] / 1000, now) if oldest else now))  # whole seconds, as GitHub lists times
    if keep and not conn.hsetnx(keys.RECOVERY, "origin_ms", int(at * 1000)):
        return int(conn.hget(keys.RECOVERY, "origin_ms")) / 1000  # another pass set it first
    return at


def _transient(exc: Exception) -> bool:
    """An ask worth trying again next pass (GitHub busy or unreachable), not a refusal for good."""
    if isinstance(exc, RequestFailed):
        status = exc.response.status_code
        return status >= 500 or status in (403, 429)  # 403: a secondary rate limit
    return True


def recover(conn: redis.Redis, settings: Settings, *, since_seconds: float | None = None, dry_run: bool = False,
            limit: int | None = None, client: GitHub | None = None, stop: Callable[[], bool] = lambda: False) -> Pass:
    """One pass: list GitHub's deliveries in the window, ask a redelivery of each missed one,
    oldest first, at most `limit` (default ROUTINELY_RECOVER_MAX).

    The window: with `since_seconds` (by hand), the last that many seconds; without (the
    scheduler), from where the last scheduled pass settled everything, less OVERLAP_SECONDS.
    Either way no further back than GitHub's retention and recovery's origin. A dry run asks
    for nothing and writes nothing. When it returns, every guid in `asked` is claimed in
    Redis (never asked again) and GitHub accepted its redelivery. Raises RecoveryError when
    GitHub cannot be listed, redis.RedisError when Redis cannot be reached."""
    now = settings.clock()
    limit = settings.recover_max if limit is None else limit
    since = max(now - RETENTION_SECONDS, origin(conn, now, keep=not dry_run))
    if since_seconds is not None:
        since = max(since, now - since_seconds)
    else:
        checked = conn.hget(keys.RECOVERY, "checked_ms")
        if checked is not None:
            since = max(since, int(checked) / 1000 - OVERLAP_SECONDS)
    done = Pass(since=since, until=now, dry_run=dry_run)
    with contextlib.nullcontext(client) if client else app_client(settings) as gh:
        attempts = listed_since(gh, since)
        done.listed = len(attempts)
        guids = sorted({a.guid for a in attempts})
        done.deliveries = len(guids)
        recorded, asked = _known(conn, guids)
        done.missed = missed(attempts, recorded, asked)
        todo = done.missed[:limit]
        unsettled = done.missed[limit:]
        if dry_run:
            done.asked = todo
        else:
            for i, m in enumerate(todo):
                if stop():
                    unsettled += todo[i:]
                    break
                if not conn.set(keys.recovery_asked(m.guid), f"{m.redeliver_id} {int(now * 1000)}", nx=True,
                                ex=keys.EVENT_TTL):
                    continue  # another pass asked for it meanwhile
                try:
                    gh.rest.apps.redeliver_webhook_delivery(m.redeliver_id)
                except (GitHubException, httpx.HTTPError) as exc:
                    status = getattr(getattr(exc, "response", None), "status_code", None)
                    done.failed.append((m, f"HTTP {status}" if status else type(exc).__name__))
                    if _transient(exc):
                        conn.delete(keys.recovery_asked(m.guid))  # not asked after all: the next pass tries again
                        unsettled.append(m)
                    continue
                done.asked.append(m)
    done.left = len(done.missed) - len(done.asked) - len(done.failed)
    if not dry_run:
        _record(conn, done, scheduled=since_seconds is None, unsettled=unsettled)
    return done


def _known(conn: redis.Redis, guids: list[str]) -> tuple[set[str], set[str]]:
    """Of these guids: those the receiver recorded, and those recovery asked for before."""
    if not guids:
        return set(), set()
    got = conn.mget([keys.delivery(g) for g in guids] + [keys.recovery_asked(g) for g in guids])
    n = len(guids)
    return ({g for g, v in zip(guids, got[:n]) if v is not None}, {g for g, v in zip(guids, got[n:]) if v is not None})


def _record(conn: redis.Redis, done: Pass, scheduled: bool, unsettled: list[Missed]) -> None:
    pipe = conn.pipeline(transaction=False)
    if scheduled:
        # everything delivered before this is settled (recorded, or asked for): the next pass starts here
        checked = min([m.last_at for m in unsettled], default=done.until)
        pipe.hset(keys.RECOVERY, "checked_ms", int(checked * 1000))
    pipe.hset(keys.RECOVERY, mapping={"last_pass_at": iso(done.until), "last_asked": len(done.asked)})
    pipe.hincrby(keys.RECOVERY, "passes", 1)
    pipe.hincrby(keys.RECOVERY, "asked", len(done.asked))
    pipe.hincrby(keys.RECOVERY, "ask_failed", len(done.failed))
    pipe.execute()


def counts(conn: redis.Redis) -> dict[str, int]:
    """Recovery's counters since this Redis began (Prometheus counters): passes, asked, ask_failed."""
    got = conn.hmget(keys.RECOVERY, "passes", "asked", "ask_failed")
    return {name: int(v or 0) for name, v in zip(("passes", "asked", "ask_failed"), got)}


class Recoverer:
    """The leading scheduler's recovery: a pass when it first leads, then every
    ROUTINELY_RECOVER_MINUTES (a minute after a pass that was full, failed or cut short).

    Each pass runs in a thread of its own, so schedules keep firing and the lease keeps
    being renewed while GitHub is paged; `due()` never blocks. One line per pass."""

    def __init__(self, conn: redis.Redis, settings: Settings, who: str = "scheduler", out: TextIO | None = None) -> None:
        self.conn, self.settings, self.who, self.out = conn, settings, who, out
        self._next = 0.0  # monotonic time of the next pass: at once
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._jwt = MemCacheStrategy()  # the App's JWT, reused across passes while it lives

    def due(self) -> None:
        """Start a pass when one is due and none runs (call it while holding the lease)."""
        if self._stop.is_set() or (self._thread and self._thread.is_alive()) or time.monotonic() < self._next:
            return
        self._thread = threading.Thread(target=self._pass, name="recovery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let a running pass finish the ask in hand and end (the rest is left to the next scheduler)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _pass(self) -> None:
        wait = self.settings.recover_minutes * 60
        try:
            with app_client(self.settings, self._jwt) as gh:
                done = recover(self.conn, self.settings, client=gh, stop=self._stop.is_set)
            line = done.line()
            if done.left or done.failed:
                wait = min(wait, RETRY_SECONDS)
        except RecoveryError as exc:
            line, wait = f"recovery failed: {exc}; trying again in {RETRY_SECONDS} s", RETRY_SECONDS
        except redis.RedisError as exc:
            line, wait = f"recovery stopped: Redis {type(exc).__name__}; trying again in {RETRY_SECONDS} s", RETRY_SECONDS
        except Exception as exc:  # a thread of its own: nothing else would say it died
            line, wait = f"recovery failed: {type(exc).__name__}: {exc}; trying again in {RETRY_SECONDS} s", RETRY_SECONDS
        self._next = time.monotonic() + wait
        print(f"routinely {self.who}: {line}", file=self.out or sys.stderr, flush=True)
