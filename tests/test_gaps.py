"""Unit: the gap rule (cadence, threshold) and the ledger of history calls read back from a log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventlog.events import BACKFILL, BACKFILL_FAILED, PUSH
from eventlog.store import LogStore
from projections.gaps import MIN_READINGS, cadence, find_gaps, threshold
from projections.history_calls import CallLedger, read_ledger
from service.config import SettingsError, load_settings

T0 = datetime(2026, 5, 1, 8, 0, 0)


def every(seconds: float, count: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(seconds=seconds * n) for n in range(count)]


def test_the_cadence_is_the_median_interval_and_needs_ten_readings():
    assert cadence(every(60, MIN_READINGS - 1)) is None
    times = every(60, 20)
    times.insert(5, times[4] + timedelta(seconds=1))  # one odd interval does not move a median
    assert cadence(times) == 60.0


def test_a_gap_is_more_than_two_and_a_half_cadences_or_a_cadence_and_a_minute():
    assert threshold(60) == 150 and threshold(10) == 70
    times = every(10, 20)
    short = [*times, times[-1] + timedelta(seconds=70)]  # exactly the threshold: no gap
    assert find_gaps(1, short) == (10.0, [])
    late = times[-1] + timedelta(seconds=71)
    every_, [gap] = find_gaps(1, [*times, late])
    assert every_ == 10.0 and (gap.after, gap.before) == (times[-1], late)
    assert (gap.start, gap.end, gap.missing) == (times[-1] + timedelta(seconds=1), late - timedelta(seconds=1), 6)


def test_a_gap_between_gaps_is_found_each():
    times = every(60, 12) + every(60, 12, T0 + timedelta(hours=1)) + every(60, 12, T0 + timedelta(hours=2))
    _, gaps = find_gaps(7, times)
    assert [(g.after.time().isoformat(), g.before.time().isoformat()) for g in gaps] == [
        ("08:11:00", "09:00:00"), ("09:11:00", "10:00:00")
    ]


def request(sensor: int, start: str, end: str, paging: str = "") -> dict:
    return {"sensorId": sensor, "startDate": start, "endDate": end, "pagingState": paging, "pageSize": 100}


def test_the_ledger_counts_the_day_and_remembers_answered_windows():
    ledger = CallLedger("2026-05-02")
    window = ("2026-05-01 09:00:01", "2026-05-01 09:59:59")
    ledger.add(BACKFILL, "2026-05-01", request(1, *window), {"flag": "00", "nextPage": "0x10", "dataList": []})
    ledger.add(BACKFILL, "2026-05-02", request(1, *window, "0x10"), {"flag": "00", "nextPage": "", "dataList": []})
    ledger.add(BACKFILL_FAILED, "2026-05-02", request(2, *window), {"flag": "01", "msg": "quota"})
    ledger.add(BACKFILL_FAILED, "2026-05-02", request(3, *window), {"error": "timed out"})
    ledger.add(BACKFILL, "2026-05-02", {"sensorId": "x"}, {})  # not a request of this service: ignored
    one, two, three = ledger.of(1), ledger.of(2), ledger.of(3)
    assert (one.spent_today, two.spent_today, three.spent_today) == (1, 1, 1)
    assert (one.refused_today, two.refused_today, three.refused_today) == (False, True, False)
    inside = (datetime(2026, 5, 1, 9, 10), datetime(2026, 5, 1, 9, 20))
    assert ledger.answered(1, *inside) and not ledger.answered(2, *inside)
    assert not ledger.answered(1, datetime(2026, 5, 1, 8), datetime(2026, 5, 1, 9, 20))


async def test_the_ledger_is_read_from_the_log_files(log_root):
    store = LogStore(log_root)
    await store.open()
    try:
        window = ("2026-05-01 09:00:01", "2026-05-01 09:59:59")
        body = {"flag": "00", "nextPage": "0x64", "dataList": [{"addTime": "2026-05-01 09:00:02", "val": "1"}]}
        await store.append(store.new_event(BACKFILL, 5, 385, body, request(11, *window)))
        await store.append(store.new_event(PUSH, 5, 385, {"note": "a push is not a call"}))
        today = store.new_event(PUSH, 5, 385, {}).day
    finally:
        await store.close()
    ledger = read_ledger(log_root, 5, "2000-01-01", today)
    start, end = (datetime.fromisoformat(w) for w in window)
    assert ledger.of(11).spent_today == 1 and ledger.resume_from(11, start, end) == "0x64"
    assert read_ledger(log_root, 5, "2999-01-01", today).of(11).spent_today == 0  # files before `since_day` skipped


def test_the_platform_zone_is_an_iana_name_an_offset_or_utc():
    assert load_settings(TLINK_TIMEZONE="").platform_zone == UTC
    assert load_settings(TLINK_TIMEZONE="-03:30").platform_zone.utcoffset(None) == -timedelta(hours=3, minutes=30)
    shanghai = load_settings(TLINK_TIMEZONE="Asia/Shanghai").platform_zone
    assert datetime(2026, 5, 1, tzinfo=shanghai).utcoffset() == timedelta(hours=8)
    for bad in ("Mars/Olympus", "+8", "UTC+08:00"):
        with pytest.raises(SettingsError, match="TLINK_TIMEZONE"):
            load_settings(TLINK_TIMEZONE=bad)
