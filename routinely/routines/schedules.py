"""Schedule triggers: presets and cron in an IANA timezone, the one-hour floor, the stagger.

Presets are turned into cron expressions and cronsim walks them in the schedule's zone,
which gives the DST rules the contract asks for: a local time that does not exist runs at
the first instant after the gap, one that occurs twice runs once.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

FLOOR_SECONDS = 3600
MAX_STAGGER_SECONDS = 300
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbering: sun = 0
PRESETS = ("hourly", "daily", "weekdays", "weekly")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_KEYS = {
    "hourly": {"preset", "minute", "timezone"},
    "daily": {"preset", "time", "timezone"},
    "weekdays": {"preset", "time", "timezone"},
    "weekly": {"preset", "day", "time", "timezone"},
    "cron": {"cron", "timezone"},
    "at": {"at", "timezone"},
}


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says what to change."""


def zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"timezone must be an IANA name such as Asia/Tokyo, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"timezone {name!r} is not an IANA time zone (e.g. Europe/Paris, UTC)") from None


@dataclass(frozen=True)
class Schedule:
    id: str
    spec: dict[str, Any]  # as written in the routine file, timezone filled in
    tz: ZoneInfo
    cron: str | None = None
    at: datetime | None = None  # aware, in tz

    def runs(self, after: float, stagger: int, previous: float | None = None) -> Iterator[float]:
        """Run times (epoch seconds, stagger included) strictly after `after`.

        A run closer than the one-hour floor to the one before it (only possible where a DST
        gap moves a run forward) is skipped, so the floor holds at run time too.
        """
        if self.at is not None:
            t = self.at.timestamp() + stagger
            if t > after:
                yield t
            return
        start = datetime.fromtimestamp(after - stagger, self.tz)
        for dt in CronSim(self.cron, start):
            t = dt.timestamp() + stagger
            if t <= after:
                continue
            if previous is not None and t - previous < FLOOR_SECONDS:
                continue
            previous = t
            yield t

    def next_run(self, after: float, stagger: int, previous: float | None = None) -> float | None:
        return next(self.runs(after, stagger, previous), None)


def stagger_seconds(identity: str) -> int:
    """A fixed 0–5 minute offset from the routine's identity: the same on every host and restart."""
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_STAGGER_SECONDS + 1)


def parse_schedule(spec: Any, default_tz: str, now: float) -> Schedule:
    """Validate one schedule trigger's mapping; raises ScheduleError saying what is wrong."""
    if not isinstance(spec, dict):
        raise ScheduleError(f"a schedule is a mapping (preset, cron or at), got {spec!r}")
    forms = [k for k in ("preset", "cron", "at") if k in spec]
    if len(forms) != 1:
        raise ScheduleError("a schedule takes exactly one of preset, cron or at")
    form = spec["preset"] if forms == ["preset"] else forms[0]
    if forms == ["preset"] and form not in PRESETS:
        raise ScheduleError(f"preset {form!r} is unknown; known: {', '.join(PRESETS)}")
    unknown = set(spec) - _KEYS[form]
    if unknown:
        raise ScheduleError(f"unknown key(s) {sorted(unknown)} for {form}; it takes {sorted(_KEYS[form])}")
    tz_name = spec.get("timezone", default_tz)
    tz = zone(tz_name)
    normalized = {**spec, "timezone": tz_name}
    sid = "sch_" + hashlib.sha256(json.dumps(normalized, sort_keys=True).encode()).hexdigest()[:10]

    if form == "at":
        at = _local_datetime(spec["at"], tz)
        if at.timestamp() <= now:
            raise ScheduleError(f"at {spec['at']!r} is in the past; set a future local time or remove the schedule")
        return Schedule(id=sid, spec=normalized, tz=tz, at=at)
    cron = spec["cron"] if form == "cron" else _preset_cron(form, spec)
    if not isinstance(cron, str):
        raise ScheduleError(f"cron must be a five-field string such as \"0 9 * * 1-5\", got {cron!r}")
    if len(cron.split()) != 5:
        raise ScheduleError(f"cron {cron!r} must have five fields: minute hour day-of-month month day-of-week")
    try:
        parsed = CronSim(cron, datetime.now(timezone.utc))
        next(iter(parsed))
    except (CronSimError, StopIteration) as exc:
        raise ScheduleError(f"cron {cron!r} is not valid: {exc or 'it never runs'}") from None
    gap = _shortest_gap_minutes(sorted(parsed.minutes))
    if gap is not None:
        raise ScheduleError(
            f"cron {cron!r} can run {gap} minutes apart; schedules run at most once an hour "
            "(use one minute value, e.g. \"0 * * * *\")"
        )
    return Schedule(id=sid, spec=normalized, tz=tz, cron=cron)


def _shortest_gap_minutes(minutes: list[int]) -> int | None:
    """Two minute values in an hour mean two runs in that hour: the floor is broken.

    With a single minute value, successive runs are whole hours apart in local time.
    """
    if len(minutes) < 2:
        return None
    gaps = [b - a for a, b in zip(minutes, minutes[1:])] + [60 - minutes[-1] + minutes[0]]
    return min(gaps)


def _preset_cron(preset: str, spec: dict[str, Any]) -> str:
    if preset == "hourly":
        minute = spec.get("minute", 0)
        if not isinstance(minute, int) or isinstance(minute, bool) or not 0 <= minute <= 59:
            raise ScheduleError(f"hourly takes minute: 0..59, got {minute!r}")
        return f"{minute} * * * *"
    if "time" not in spec:
        raise ScheduleError(f"{preset} needs time: \"HH:MM\" (24-hour)")
    hh, mm = _hh_mm(spec["time"])
    if preset == "daily":
        return f"{mm} {hh} * * *"
    if preset == "weekdays":
        return f"{mm} {hh} * * 1-5"
    day = spec.get("day")
    if not isinstance(day, str) or day.lower()[:3] not in DAYS:
        raise ScheduleError(f"weekly takes day: one of {', '.join(DAYS[1:] + DAYS[:1])}, got {day!r}")
    return f"{mm} {hh} * * {DAYS.index(day.lower()[:3])}"


def _hh_mm(value: Any) -> tuple[int, int]:
    match = _TIME.match(value) if isinstance(value, str) else None
    if not match:
        raise ScheduleError(f"time must be \"HH:MM\" (24-hour), got {value!r}")
    return int(match.group(1)), int(match.group(2))


def _local_datetime(value: Any, tz: ZoneInfo) -> datetime:
    if isinstance(value, datetime):  # YAML may already have parsed it
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ScheduleError(f"at must be a local date and time like \"2026-12-01T09:00\", got {value!r}") from None
    else:
        raise ScheduleError(f"at must be a local date and time like \"2026-12-01T09:00\", got {value!r}")
    if dt.tzinfo is not None:
        raise ScheduleError(f"at {value!r} carries an offset; write local time and set timezone instead")
    return dt.replace(tzinfo=tz)
