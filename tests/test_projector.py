"""Unit: the projector on the in-memory recorder (order, outages, restarts, failures)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from eventlog.events import PUSH
from eventlog.store import LogStore
from projections.projector import Projector
from projections.recorder import MemoryRecorder
from service.ingest import append_and_project


def push_body(device_id: int, sensor_values: dict[int, str], time: str, times: str | None = None) -> dict:
    return {
        "flag": "00",
        "deviceId": device_id,
        "deviceUserid": 385,
        "time": time,
        "sensorsDates": [
            {"sensorsId": s, "value": v, "reVal": v, "times": times or time[11:], "isAlarm": "0", "isLine": 1}
            for s, v in sensor_values.items()
        ],
    }


class Harness:
    def __init__(self, root, recorder=None):
        self.root = root
        self.recorder = recorder or MemoryRecorder()
        self.now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
        self.store = LogStore(root, clock=lambda: self.now)

    async def start(self):
        await self.store.open()
        self.projector = Projector(self.recorder, self.root, self.store, retry_seconds=0.05)
        await self.projector.start()

    async def stop(self):
        await self.store.close()
        await self.projector.stop()

    async def push(self, body):
        event = self.store.new_event(PUSH, body["deviceId"], 385, body)
        appended, projection = await append_and_project(self.store, self.projector, event)
        return appended, await projection

    async def settle(self):
        for _ in range(200):
            if self.projector.behind == 0 and self.projector.queued == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("projector did not catch up")


@pytest.fixture
async def harness(log_root):
    h = Harness(log_root)
    await h.start()
    yield h
    await h.stop()


async def test_a_push_is_projected_before_it_is_answered(harness):
    _, projected = await harness.push(push_body(1, {11: "5.0", 12: "7.5"}, "2026-05-01 10:00:00"))
    assert projected
    assert harness.recorder.sensor_latest[(1, 11)].reading.value == "5.0"
    assert len(harness.recorder.readings) == 2 and len(harness.recorder.events) == 1


async def test_a_late_older_reading_never_replaces_the_latest(harness):
    await harness.push(push_body(1, {11: "new"}, "2026-05-01 10:00:00"))
    await harness.push(push_body(1, {11: "old"}, "2026-05-01 09:00:00"))
    latest = harness.recorder.sensor_latest[(1, 11)].reading
    assert (latest.value, latest.recorded_at) == ("new", datetime(2026, 5, 1, 10))
    assert len(harness.recorder.readings) == 2


async def test_the_same_reading_twice_is_kept_once(harness):
    await harness.push(push_body(1, {11: "5"}, "2026-05-01 10:00:00"))
    await harness.push(push_body(1, {11: "5"}, "2026-05-01 10:00:00") | {"flag": "01"})
    assert len(harness.recorder.readings) == 1 and len(harness.recorder.events) == 2


async def test_concurrent_pushes_all_land_exactly_once(harness):
    bodies = [push_body(1 + i % 7, {100 + i: str(i)}, f"2026-05-01 10:{i // 60:02d}:{i % 60:02d}") for i in range(300)]
    results = await asyncio.gather(*(harness.push(b) for b in bodies))
    assert all(projected for _, projected in results)
    assert len(harness.recorder.events) == 300 and len(harness.recorder.readings) == 300


async def test_database_outage_accepts_on_the_log_and_catches_up(harness):
    await harness.push(push_body(2, {21: "a"}, "2026-05-01 10:00:00"))
    harness.recorder.available = False
    outcomes = [await harness.push(push_body(2, {21: str(i)}, f"2026-05-01 10:01:{i:02d}")) for i in range(5)]
    assert not any(projected for _, projected in outcomes)
    assert len(harness.recorder.events) == 1
    harness.recorder.available = True
    await harness.settle()
    assert len(harness.recorder.events) == 6 and len(harness.recorder.readings) == 6
    assert harness.recorder.sensor_latest[(2, 21)].reading.value == "4"
    _, projected = await harness.push(push_body(2, {21: "z"}, "2026-05-01 10:02:00"))
    assert projected


async def test_a_restart_applies_what_the_log_has_and_the_recorder_lacks(log_root):
    recorder = MemoryRecorder()
    first = Harness(log_root, recorder)
    await first.start()
    await first.push(push_body(3, {31: "1"}, "2026-05-01 10:00:00"))
    recorder.available = False
    await first.push(push_body(3, {31: "2"}, "2026-05-01 10:00:10"))
    first.now += timedelta(days=1)
    await first.push(push_body(3, {31: "3"}, "2026-05-01 10:00:20"))
    await first.stop()
    recorder.available = True
    second = Harness(log_root, recorder)
    await second.start()
    await second.settle()
    assert len(recorder.events) == 3
    assert sorted(recorder.files) == [(3, "2026-05-01"), (3, "2026-05-02")]
    assert recorder.sensor_latest[(3, 31)].reading.value == "3"
    await second.stop()


async def test_an_event_that_cannot_be_applied_stops_only_its_device(harness, monkeypatch):
    record = harness.recorder.record

    async def broken_for_device_4(changes, before_commit=None):
        if any(p.event.device_id == 4 and p.line_no == 2 for p in changes.events):
            raise RuntimeError("value does not fit its column")
        await record(changes, before_commit)

    monkeypatch.setattr(harness.recorder, "record", broken_for_device_4)
    assert (await harness.push(push_body(4, {41: "1"}, "2026-05-01 10:00:00")))[1]
    bodies = [push_body(4, {41: "2"}, "2026-05-01 10:01:00"), push_body(5, {51: "1"}, "2026-05-01 10:01:00")]
    outcomes = await asyncio.gather(*(harness.push(b) for b in bodies))  # one batch, two devices
    assert [projected for _, projected in outcomes] == [False, True]
    stop = harness.projector.stopped[4]
    assert (stop.day, stop.line_no, stop.event_id) == ("2026-05-01", 2, outcomes[0][0].event.id)
    assert "value does not fit" in stop.reason and "device4-2026-05-01.log line 2" in stop.describe(harness.root)
    assert harness.projector.failed is None and harness.projector.stats.failures == 1
    assert not (await harness.push(push_body(4, {41: "3"}, "2026-05-01 10:02:00")))[1]  # stays stopped
    assert (await harness.push(push_body(5, {51: "2"}, "2026-05-01 10:02:00")))[1]  # the others go on
    assert harness.recorder.sensor_latest[(4, 41)].reading.value == "1"  # nothing after the stop
    assert harness.recorder.sensor_latest[(5, 51)].reading.value == "2"


async def test_a_failed_fsync_projects_nothing_of_its_batch(harness, monkeypatch):
    import os

    from eventlog.store import LogUnavailable

    await harness.push(push_body(5, {51: "1"}, "2026-05-01 10:00:00"))

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(LogUnavailable):
        await harness.push(push_body(5, {51: "2"}, "2026-05-01 10:00:10"))
    monkeypatch.undo()
    await harness.settle()
    assert len(harness.recorder.events) == 1  # the line never written is not in the read models either
    _, projected = await harness.push(push_body(5, {51: "3"}, "2026-05-01 10:00:20"))
    assert projected and len(harness.recorder.events) == 2
