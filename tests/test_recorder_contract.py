"""Contract: every recorder (memory, SQLite, MariaDB) gives the same results for the same events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from eventlog.events import PUSH, SYNC, Event, encode_line, line_hash, new_event_id
from projections.changes import Placed, changes_of
from projections.db import connect
from projections.recorder import MemoryRecorder, Position, Recorder
from projections.sql_recorder import SqlRecorder
from tests.conftest import fixture_bytes, mysql_database_url


@pytest.fixture(params=["memory", "sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
async def recorder(request, tmp_path) -> AsyncIterator[Recorder]:
    if request.param == "memory":
        yield MemoryRecorder()
        return
    urls = mysql_database_url() if request.param == "mysql" else iter([f"sqlite:///{tmp_path}/c.db"])
    url = next(urls)
    db = await connect(url)
    rec = SqlRecorder(db, auto_schema=True)
    await rec.positions()
    yield rec
    await db.close()
    for _ in urls:  # drop the MySQL database
        pass


class Log:
    """Events placed as a device's log would place them."""

    def __init__(self) -> None:
        self.heads: dict[int, tuple[str, int, int, str]] = {}
        self.at = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)

    def place(self, type_: str, device_id: int, body: dict[str, Any], user_id: int = 385) -> Placed:
        self.at += timedelta(seconds=1)
        event = Event(new_event_id(int(self.at.timestamp() * 1000)), type_, self.at, device_id, user_id, body)
        day, end, lines, prev = self.heads.get(device_id, (event.day, 0, 0, "0" * 64))
        line = encode_line(event, prev)
        placed = Placed(event, day, lines + 1, end, len(line) + 1, line_hash(line))
        self.heads[device_id] = (day, end + len(line) + 1, lines + 1, line_hash(line))
        return placed


def push(device_id: int, values: dict[int, str], time: str, **extra: Any) -> dict[str, Any]:
    return {
        "flag": "00", "deviceId": device_id, "deviceUserid": 385, "parentUserId": "217", "time": time,
        "sensorsDates": [{"sensorsId": s, "value": v, "reVal": v, "times": time[11:], "sensorsTypeId": 1,
                          "isAlarm": "0", "isLine": 1} for s, v in values.items()],
        **extra,
    }  # fmt: skip


def scenario() -> list[Placed]:
    log = Log()
    sync_device = orjson.loads(fixture_bytes("sync_page1.json"))["dataList"][0]
    return [
        log.place(PUSH, 3000, push(3000, {30001: "1490.0"}, "2026-11-27 09:10:00")),
        log.place(SYNC, 3000, sync_device),  # names, units; reading 30001 @ 09:15 = 1500.0
        log.place(PUSH, 3000, push(3000, {30001: "1400.0"}, "2026-11-27 09:00:00")),  # late and older
        log.place(PUSH, 3000, push(3000, {30001: "1500.0"}, "2026-11-27 09:15:00")),  # same reading as sync
        log.place(PUSH, 7, push(7, {71: "a", 72: "b"}, "2026-11-27 10:00:00", parentUserId="900")),
        log.place(PUSH, 7, push(7, {71: "c"}, "2026-11-27 11:00:00", flag="02")),
    ]


async def snapshot(rec: Recorder) -> dict[str, Any]:
    """What a reader can see, in one shape for every backend."""
    if isinstance(rec, MemoryRecorder):
        latest = {s: (r.reading.value, r.reading.recorded_at) for (_, s), r in rec.sensor_latest.items()}
        readings = {(d, s, t): r.value for (d, s, t), (_, r, _) in rec.readings.items()}
        names = {s: (m.sensor_name, m.unit) for (_, s), m in rec.sensor_meta.items()}
        flags = {d: p.last_flag for d, p in rec.device_pushes.items()}
        device_names = {d: m.device_name for d, m in rec.device_meta.items()}
        parents = {u: r.parent_user_id for u, r in rec.users.items()}
        return dict(latest=latest, readings=readings, names=names, flags=flags, devices=device_names,
                    parents=parents, events=len(rec.events))  # fmt: skip
    assert isinstance(rec, SqlRecorder)
    db = rec.db

    def when(value: Any) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    rows = await db.fetchall("SELECT sensor_id, latest_value, latest_recorded_at, sensor_name, unit FROM sensors")
    latest = {int(r[0]): (r[1], when(r[2])) for r in rows if r[2] is not None}
    names = {int(r[0]): (r[3], r[4]) for r in rows if r[3] is not None}
    readings = {(int(r[0]), int(r[1]), when(r[2])): r[3] for r in await db.fetchall(
        "SELECT device_id, sensor_id, recorded_at, value FROM sensor_readings")}  # fmt: skip
    devices = await db.fetchall("SELECT device_id, last_flag, device_name FROM devices")
    parents = dict(await db.fetchall("SELECT tlink_user_id, parent_user_id FROM users"))
    [(events,)] = await db.fetchall("SELECT COUNT(*) FROM events")
    return dict(latest=latest, readings=readings, names=names,
                flags={int(d): f for d, f, _ in devices if f is not None},
                devices={int(d): n for d, _, n in devices if n is not None},
                parents={int(k): v for k, v in parents.items()}, events=int(events))  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 2, 6])
async def test_same_read_models_whatever_the_batches(recorder, batch_size):
    events = scenario()
    for i in range(0, len(events), batch_size):
        await recorder.record(changes_of(events[i : i + batch_size]))
    seen = await snapshot(recorder)
    assert seen["events"] == 6
    assert seen["latest"][30001] == ("1500.0", datetime(2026, 11, 27, 9, 15))  # newest wins, late one ignored
    assert seen["latest"][71] == ("c", datetime(2026, 11, 27, 11))
    assert len([k for k in seen["readings"] if k[1] == 30001]) == 3  # 09:00, 09:10, 09:15 once
    assert seen["names"][30001] == ("Oil height", "mm")
    assert seen["devices"][3000] == "Tank 1"
    assert seen["flags"] == {3000: "00", 7: "02"}
    assert seen["parents"] == {385: "217"}  # the newest push says 217 again


async def test_recording_a_batch_again_changes_nothing(recorder):
    events = scenario()
    await recorder.record(changes_of(events))
    before = await snapshot(recorder)
    if isinstance(recorder, MemoryRecorder):
        pytest.skip("the memory recorder refuses a repeated event id by design")
    await recorder.record(changes_of(events))
    assert await snapshot(recorder) == before


async def test_positions_are_the_newest_file_of_each_device(recorder):
    events = scenario()
    await recorder.record(changes_of(events))
    positions = await recorder.positions()
    last_3000 = events[3]
    assert positions[3000] == Position(last_3000.day, 4, last_3000.end, last_3000.hash)
    assert positions[7].line_count == 2


async def test_known_pushes_finds_stored_bodies_by_device(recorder):
    from eventlog.events import body_digest

    events = scenario()
    await recorder.record(changes_of(events))
    first = events[0].event
    known = await recorder.known_pushes([(3000, body_digest(first.body)), (7, body_digest(first.body))])
    assert known == {(3000, body_digest(first.body)): first.id}


@pytest.mark.parametrize("batch_size", [1, 7])
async def test_push_times_are_the_newest_upload_whatever_arrives_last(recorder, batch_size):
    log = Log()
    events = scenario()
    for placed in events:  # continue the scenario's chains
        log.heads[placed.event.device_id] = (placed.day, placed.end, placed.line_no, placed.hash)
        log.at = placed.event.received_at
    events.append(log.place(PUSH, 7, push(7, {71: "late"}, "2026-11-27 10:30:00", flag="05")))
    for i in range(0, len(events), batch_size):
        await recorder.record(changes_of(events[i : i + batch_size]))
    times = await recorder.push_times([3000, 7, 99])
    assert times == {3000: datetime(2026, 11, 27, 9, 15), 7: datetime(2026, 11, 27, 11)}
    assert (await snapshot(recorder))["flags"][7] == "05"  # the flag is the last push received
