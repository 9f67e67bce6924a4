"""Admission: which limits a firing must pass, in the contract's order.

`checks` says which counters apply at an instant (pure: no Redis): the routine's and the
account's rate windows, the daily cap, the daily budget. The rule over their values lives in
one place, routinely/firing/start.lua, inside the one atomic step that also counts (so any number
of web processes share exact counts): the first rate window at its maximum drops the
firing; an account whose model spend today has reached its `daily_budget_usd` drops it
(`daily_budget`, before the cap: a stopped account uses none of it); past the daily cap a
firing is dropped, or admitted as metered when the account allows extra usage. The tests
drive the script with a table of cases (tests/test_start_plan.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from routinely.storage import keys
from routinely import when
from routinely.routine_file import Account, RateLimit, Routine

# the reasons in the order the script checks the limits (its REASONS table is made from this)
REASONS = ("routine_rate_limit", "account_rate_limit", "daily_cap", "daily_budget")

# what each drop means and which setting of the routine file raises it
FIXES = {
    "routine_rate_limit": "the routine's rate limit is reached; raise `rate_limit:` on the routine",
    "account_rate_limit": "the account's rate limit is reached; raise `rate_limit:` on the account",
    "daily_cap": ("the account's runs for today are used; raise `plan:` (pro 5, max 15, team 25, enterprise 25 "
                  "a day) or set `extra_usage: true` on the account"),
    "daily_budget": "the account's model budget for today is spent; raise `daily_budget_usd:` on the account",
}


def wait_words(seconds: int | float) -> str:
    """`6 h 50 min`, `3 min 5 s`, `42 s`: a wait a person reads at a glance."""
    seconds = max(0, math.ceil(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def drop_message(reason: str, retry_after: int | float | None) -> str:
    """The one line for a dropped firing: why, when it opens again, and what raises the limit."""
    wait = f"; it opens again in {wait_words(retry_after)}" if retry_after else ""
    return f"dropped ({reason}): {FIXES.get(reason, reason)}{wait}"


@dataclass(frozen=True)
class Window:
    """One counter a firing must stay under: at `max` it is dropped for `retry_after` s."""

    key: str
    max: int
    ttl: int  # seconds the counter lives once made
    retry_after: int


@dataclass(frozen=True)
class Budget:
    """The account's model spend today (`field` of the hash `key`, written by the gateway):
    at `max` USD firings are dropped for `retry_after` s (until the account's midnight)."""

    key: str
    max: float
    retry_after: int
    field: str = "cost_usd"


@dataclass(frozen=True)
class Checks:
    """One routine's admission: routine window, account window, then the daily cap."""

    routine: Window
    account: Window
    cap: Window
    extra_usage: bool  # past the cap: admitted and metered instead of dropped
    drops_key: str
    budget: Budget | None = None  # the account's daily_budget_usd, when it has one

    @property
    def windows(self) -> tuple[Window, Window, Window]:
        return (self.routine, self.account, self.cap)


def _window(scope: str, ident: str, limit: RateLimit, now: float) -> Window:
    per = limit.per_seconds
    window = int(now // per)
    remaining = (window + 1) * per - now
    return Window(keys.rate_window(scope, ident, per, window), limit.events, math.ceil(remaining) + 1,
                  max(1, math.ceil(remaining)))


def local_day(account: Account, now: float) -> tuple[str, int]:
    """The account's calendar day at `now` and the seconds until it ends (DST-aware)."""
    return when.calendar_day(account.timezone, now)


def checks(routine: Routine, account: Account, now: float) -> Checks:
    """The limits one routine's firing at `now` must pass."""
    day, until_midnight = local_day(account, now)
    return Checks(
        routine=_window("routine", routine.key, routine.rate_limit, now),
        account=_window("account", account.name, account.rate_limit, now),
        cap=Window(keys.daily_count(account.name, day), account.daily_cap, 2 * keys.DAY, until_midnight),
        extra_usage=account.extra_usage,
        drops_key=keys.drops(routine.key),
        budget=None if account.daily_budget_usd is None else Budget(
            keys.usage_day("account", account.name, day), float(account.daily_budget_usd), until_midnight),
    )
