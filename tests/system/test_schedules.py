"""Next-run computation: presets and cron in time zones, across real DST transitions; the floor; stagger."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from routinely.routines.schedules import ScheduleError, parse_schedule, stagger_seconds

NY, TOKYO, UTC = ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo"), timezone.utc
NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def runs(spec, start: datetime, n: int, tz: str = "UTC", stagger: int = 0) -> list[datetime]:
    sch = parse_schedule(spec, tz, NOW)
    out, after = [], start.timestamp()
    for t in sch.runs(after, stagger):
        out.append(datetime.fromtimestamp(t, start.tzinfo))
        if len(out) == n:
            break
    return out


def test_daily_0900_in_new_york_stays_0900_local_across_both_transitions():
    spring = runs({"preset": "daily", "time": "09:00", "timezone": "America/New_York"}, datetime(2026, 3, 7, 0, 0, tzinfo=NY), 3)
    assert [d.isoformat() for d in spring] == ["2026-03-07T09:00:00-05:00", "2026-03-08T09:00:00-04:00", "2026-03-09T09:00:00-04:00"]
    fall = runs({"preset": "daily", "time": "09:00", "timezone": "America/New_York"}, datetime(2026, 10, 31, 0, 0, tzinfo=NY), 3)
    assert [d.isoformat() for d in fall] == ["2026-10-31T09:00:00-04:00", "2026-11-01T09:00:00-05:00", "2026-11-02T09:00:00-05:00"]
    # 24 hours of UTC apart on ordinary days, 23 and 25 across the changes
    assert spring[1].timestamp() - spring[0].timestamp() == 23 * 3600
    assert fall[1].timestamp() - fall[0].timestamp() == 25 * 3600


def test_a_time_in_the_spring_gap_runs_at_the_first_instant_after_it():
    got = runs({"preset": "daily", "time": "02:30", "timezone": "America/New_York"}, datetime(2026, 3, 7, 12, 0, tzinfo=NY), 2)
    assert [d.isoformat() for d in got] == ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]


def test_a_time_that_occurs_twice_runs_once():
    got = runs({"preset": "daily", "time": "01:30", "timezone": "America/New_York"}, datetime(2026, 10, 31, 12, 0, tzinfo=NY), 2)
    assert [d.isoformat() for d in got] == ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]


def test_hourly_across_the_spring_gap_keeps_the_floor():
    got = runs({"preset": "hourly", "minute": 30, "timezone": "America/New_York"}, datetime(2026, 3, 8, 0, 0, tzinfo=NY), 4)
    stamps = [d.timestamp() for d in got]
    assert all(b - a >= 3600 for a, b in zip(stamps, stamps[1:]))
    assert [d.strftime("%H:%M") for d in got] == ["00:30", "01:30", "03:30", "04:30"]


def test_hourly_across_the_fall_repeat_runs_each_real_hour():
    got = runs({"preset": "hourly", "minute": 0, "timezone": "America/New_York"}, datetime(2026, 11, 1, 0, 30, tzinfo=NY), 3)
    assert [(b.timestamp() - a.timestamp()) for a, b in zip(got, got[1:])] in ([3600, 7200], [7200, 3600], [3600, 3600])


def test_weekdays_skip_the_weekend_in_tokyo():
    got = runs({"preset": "weekdays", "time": "09:00"}, datetime(2026, 11, 27, 10, 0, tzinfo=TOKYO), 2, tz="Asia/Tokyo")
    assert [d.strftime("%a %H:%M") for d in got] == ["Mon 09:00", "Tue 09:00"]  # the 27th is a Friday


def test_weekly_and_cron_with_zones_and_the_account_default():
    got = runs({"preset": "weekly", "day": "wed", "time": "18:15"}, datetime(2026, 11, 24, tzinfo=TOKYO), 2, tz="Asia/Tokyo")
    assert [d.strftime("%Y-%m-%d %a %H:%M") for d in got] == ["2026-11-25 Wed 18:15", "2026-12-02 Wed 18:15"]
    got = runs({"cron": "0 */2 * * *", "timezone": "UTC"}, datetime(2026, 11, 24, 1, 0, tzinfo=UTC), 2, tz="Asia/Tokyo")
    assert [d.strftime("%H:%M") for d in got] == ["02:00", "04:00"]


def test_at_runs_once_then_is_spent():
    sch = parse_schedule({"at": "2026-12-01T09:00", "timezone": "Asia/Tokyo"}, "UTC", NOW)
    t = sch.next_run(NOW, 0)
    assert datetime.fromtimestamp(t, TOKYO).isoformat() == "2026-12-01T09:00:00+09:00"
    assert sch.next_run(t, 0) is None


def test_stagger_shifts_every_run_by_the_same_offset():
    base = runs({"preset": "daily", "time": "09:00"}, datetime(2026, 11, 24, tzinfo=UTC), 3)
    slipped = runs({"preset": "daily", "time": "09:00"}, datetime(2026, 11, 24, tzinfo=UTC), 3, stagger=123)
    assert [b.timestamp() - a.timestamp() for a, b in zip(base, slipped)] == [123, 123, 123]


def test_stagger_is_stable_across_processes_and_within_five_minutes():
    here = [stagger_seconds(f"acct/routine-{i}") for i in range(1000)]
    assert all(0 <= s <= 300 for s in here)
    assert len(set(here)) > 200  # spread out, not all at one second
    other = subprocess.run([sys.executable, "-c", "from routinely.routines.schedules import stagger_seconds as s; "
                            "print([s(f'acct/routine-{i}') for i in range(1000)])"], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert eval(other.stdout) == here


@pytest.mark.parametrize("cron,gap", [
    ("*/30 * * * *", 30), ("0,30 9 * * *", 30), ("* * * * *", 1), ("0,59 * * * *", 1), ("15,45 * * * 1", 30),
    ("0-5 9 1 1 *", 1), ("*/20 3 * * *", 20), ("0,10 9 * * 1-5", 10),
])
def test_the_one_hour_floor_rejects_with_the_shortest_gap(cron, gap):
    with pytest.raises(ScheduleError, match=f"can run {gap} minutes apart"):
        parse_schedule({"cron": cron}, "UTC", NOW)


@pytest.mark.parametrize("cron", ["0 * * * *", "59 */2 * * *", "0 9 * * 1-5", "30 0,1,2 * * *", "0 0 1 1 *", "5 4 * * sun"])
def test_hourly_or_rarer_expressions_pass_the_floor(cron):
    assert parse_schedule({"cron": cron}, "UTC", NOW).cron == cron


@pytest.mark.parametrize("spec,message", [
    ({"cron": "0 9 * *"}, "five fields"),
    ({"cron": "61 9 * * *"}, "not valid"),
    ({"cron": "0 9 * * 9"}, "not valid"),
    ({"cron": "0 9 31 2 *"}, "not valid"),
    ({"preset": "daily"}, "needs time"),
    ({"preset": "daily", "time": "25:00"}, "HH:MM"),
    ({"preset": "weekly", "time": "09:00", "day": "someday"}, "weekly takes day"),
    ({"preset": "hourly", "minute": 60}, "minute: 0..59"),
    ({"preset": "monthly", "time": "09:00"}, "preset 'monthly' is unknown"),
    ({"preset": "daily", "time": "09:00", "cron": "0 9 * * *"}, "exactly one of"),
    ({"at": "2026-12-01T09:00+09:00"}, "carries an offset"),
    ({"at": "tomorrow"}, "local date and time"),
    ({"cron": "0 9 * * *", "timezone": "Mars/Base"}, "not an IANA time zone"),
    ({"cron": "0 9 * * *", "every": 2}, "unknown key"),
])
def test_bad_schedules_are_refused(spec, message):
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(spec, "UTC", NOW)
