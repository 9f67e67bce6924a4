"""Times as a person reads them: local time with its zone, and how far away it is.

The API keeps ISO 8601 UTC; pages and the CLI say "09:00 JST (in 5 h)".
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def local(ts: float, tz: str | None = None, now: float | None = None) -> str:
    """`Tue 09:00 JST` (the date too when it is not today there); tz None: this machine's zone."""
    zone = ZoneInfo(tz) if tz else None
    at = datetime.fromtimestamp(ts, zone) if zone else datetime.fromtimestamp(ts).astimezone()
    ref = datetime.fromtimestamp(now, at.tzinfo) if now is not None else None
    day = "" if ref is not None and ref.date() == at.date() else at.strftime("%a %d %b ")
    return f"{day}{at.strftime('%H:%M')} {at.tzname()}"


def relative(ts: float, now: float) -> str:
    """`in 5 h`, `3 min ago`, `now`."""
    delta = ts - now
    span = abs(delta)
    if span < 60:
        return "now"
    if span < 3600:
        words = f"{int(span // 60)} min"
    elif span < 2 * 86_400:
        hours = span / 3600
        words = f"{hours:.0f} h" if hours >= 10 else f"{hours:.1f} h".replace(".0 h", " h")
    else:
        words = f"{span / 86_400:.0f} days"
    return f"in {words}" if delta > 0 else f"{words} ago"


def local_and_relative(ts: float, now: float, tz: str | None = None) -> str:
    """`09:00 JST (in 5 h)`."""
    return f"{local(ts, tz, now)} ({relative(ts, now)})"


def iso(ts: float) -> str:
    """A record's time (UTC, to the millisecond): every stored timestamp is written by this."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


_days: dict[str, tuple[float, float, str]] = {}  # zone -> (day start, next midnight, ISO date): one day at a time


def calendar_day(tz_name: str, now: float) -> tuple[str, int]:
    """The calendar day at `now` in the zone `tz_name` (ISO date) and the seconds until it ends (DST-aware):
    the day of daily caps and daily budgets. Each start asks; the zone arithmetic runs once a day."""
    known = _days.get(tz_name)
    if known is None or not known[0] <= now < known[1]:
        tz = ZoneInfo(tz_name)
        day = datetime.fromtimestamp(now, tz).date()
        start = datetime.combine(day, datetime.min.time(), tz).timestamp()
        midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tz).timestamp()
        known = _days[tz_name] = (start, midnight, day.isoformat())
    return known[2], max(1, math.ceil(known[1] - now))
