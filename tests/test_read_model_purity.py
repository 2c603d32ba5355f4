"""Property: the read models are a pure function of the log.

Hypothesis generates logs (devices sharing sensor ids and users, interleaved pushes and
syncs and imported legacy rows, odd but valid values, late deliveries, several receipt days,
owners that change)
and checks that live ingestion, a restart, `replay`, `rebuild` and a retention pass
followed by more live ingestion all leave the same rows in every read-model table.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.events import LEGACY, PUSH, SYNC
from eventlog.store import LogStore
from projections.db import Database, connect
from projections.projector import Projector
from projections.rebuild import rebuild
from projections.replay import replay_logs
from projections.retention import prune_logs
from projections.schema import READ_MODEL_TABLES, drop_all
from projections.sql_recorder import SqlRecorder
from service.ingest import append_and_project
from tests.conftest import mysql_database_url

DAY0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
ORDER_BY = {
    "users": "tlink_user_id",
    "devices": "device_id",
    "sensors": "device_id, sensor_id",
    "sensor_readings": "device_id, sensor_id, recorded_at",
}

odd_text = st.sampled_from(["", "0", "1500.0", "-3.25", "l'eau", 'say "hi"', "back\\slash", "ünï€ode", "🛢️", "a;END;"])
maybe_text = st.none() | odd_text


@dataclass(frozen=True)
class Op:
    """One event to ingest: its receipt time, type, device, owner, body (and a legacy row's source)."""

    at: datetime
    kind: str
    device_id: int
    user_id: int
    body: dict[str, Any]
    source: dict[str, Any] | None = None


@st.composite
def logs(draw: st.DrawFn) -> list[list[Op]]:
    """Rounds of events; the events of one round are appended concurrently (one or more flushes)."""
    rounds: list[list[Op]] = []
    at = DAY0
    for _ in range(draw(st.integers(1, 6))):
        ops = []
        for _ in range(draw(st.integers(1, 5))):
            at += timedelta(seconds=draw(st.sampled_from([0.001, 1, 90, 3600 * 9])))
            device_id = draw(st.integers(1, 3))
            user_id = draw(st.sampled_from([385, 385, 386])) if device_id == 3 else 385
            sensors = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3, unique=True))
            reading_at = DAY0.replace(tzinfo=None) + timedelta(minutes=draw(st.integers(0, 3000)))
            kind = draw(st.sampled_from([PUSH, SYNC, LEGACY]))
            if kind == PUSH:
                ops.append(Op(at, PUSH, device_id, user_id, push(device_id, user_id, reading_at, sensors, draw)))
            elif kind == SYNC:
                ops.append(Op(at, SYNC, device_id, user_id, sync(device_id, user_id, reading_at, sensors, draw)))
            else:
                ops.append(Op(at, LEGACY, device_id, user_id, *legacy(device_id, reading_at, sensors, draw)))
        rounds.append(ops)
    return rounds


def push(device_id: int, user_id: int, sent: datetime, sensors: list[int], draw: st.DrawFn) -> dict[str, Any]:
    entries = [
        {"sensorsId": s, "value": draw(maybe_text), "reVal": draw(maybe_text), "times": sent.strftime("%H:%M:%S"),
         "isAlarm": draw(st.sampled_from(["0", "1", "", None])), "isLine": draw(st.sampled_from([0, 1])),
         "sensorsTypeId": draw(st.sampled_from([None, 1, 3_000_000_000, -7])),
         "unit": draw(st.sampled_from([None, "mm", "°C"]))}
        for s in sensors
    ]  # fmt: skip
    return {
        "flag": draw(st.sampled_from(["00", "01", None])),
        "deviceId": device_id,
        "deviceUserid": user_id,
        "parentUserId": draw(st.sampled_from([None, "217", "900", 4])),
        "time": sent.strftime("%Y-%m-%d %H:%M:%S"),
        "sensorsDates": entries,
        "seq": draw(st.integers(0, 10**6)),  # an unknown field; keeps bodies mostly distinct
    }


def sync(device_id: int, user_id: int, updated: datetime, sensors: list[int], draw: st.DrawFn) -> dict[str, Any]:
    return {
        "id": device_id,
        "userId": user_id,
        "deviceName": draw(maybe_text),
        "deviceNo": f"ATG{device_id:05d}",
        "isLine": draw(st.sampled_from([0, 1])),
        "lat": draw(st.sampled_from(["", "13.7563"])),
        "lng": "100.5018",
        "sensorsList": [
            {"id": s, "sensorName": draw(maybe_text), "sensorTypeId": draw(st.sampled_from([None, 1, 2])),
             "unit": draw(st.sampled_from([None, "mm", "L"])), "value": draw(maybe_text),
             "isAlarms": draw(st.sampled_from([0, 1])), "isLine": 1, "ordernum": draw(st.sampled_from([None, 0, 2])),
             "updateDate": draw(st.sampled_from([updated.strftime("%Y-%m-%d %H:%M:%S"), None]))}
            for s in sensors
        ],
    }  # fmt: skip


def legacy(
    device_id: int, moment: datetime, sensors: list[int], draw: st.DrawFn
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row of the original service's database (body, source): a device, a sensor or a reading; its own
    `updated_at` (before, among or after the live events) says nothing to the read models."""
    table = draw(st.sampled_from(["devices", "sensors", "sensor_readings"]))
    key = {"id": draw(st.integers(1, 10**6))}
    updated = draw(st.sampled_from([None, "2020-01-01 00:00:00", moment.strftime("%Y-%m-%d %H:%M:%S"),
                                    "2099-01-01 00:00:00"]))  # fmt: skip
    sensor = sensors[0] if sensors else 1
    if table == "devices":
        body = {"id": key["id"], "device_id": device_id, "user_id": "5f0c2b8e-1d7a-4c1e-9b7e-0a1b2c3d4e5f",
                "device_name": draw(maybe_text), "device_no": draw(st.sampled_from([None, "TN-1"])),
                "group_id": draw(st.sampled_from([None, 7, "x"])), "lat": draw(st.sampled_from([None, "31.230416"])),
                "lng": None, "updated_at": updated}  # fmt: skip
        return body, {"table": table, "key": key}
    if table == "sensors":
        body = {"id": key["id"], "device_id": 1, "sensors_id": sensor, "unit": draw(st.sampled_from([None, "L"])),
                "sensors_type_id": draw(st.sampled_from([None, 1, 4])), "updated_at": updated}  # fmt: skip
        return body, {"table": table, "key": key}
    body = {"id": key["id"], "sensor_id": 1, "recorded_at": moment.strftime("%Y-%m-%d %H:%M:%S"),
            "value": draw(maybe_text), "re_val": draw(maybe_text), "is_alarm": draw(st.sampled_from([0, 1, None]))}
    return body, {"table": table, "key": key, "sensorsId": sensor}


class Live:
    """The service's write path: log store, projector and SQL recorder, on a clock of its own."""

    def __init__(self, db: Database, root: Path) -> None:
        self.db, self.root = db, root
        self.now = DAY0

    async def __aenter__(self) -> Live:
        self.store = LogStore(self.root, clock=lambda: self.now)
        await self.store.open()
        recorder = SqlRecorder(self.db, auto_schema=True)
        self.projector = Projector(recorder, self.root, self.store)
        await self.projector.start()
        await self.settle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()
        await self.projector.stop()

    async def ingest(self, rounds: list[list[Op]]) -> None:
        for ops in rounds:
            await asyncio.gather(*(self._one(op) for op in ops))
        await self.settle()

    async def _one(self, op: Op) -> None:
        self.now = max(self.now, op.at)
        event = self.store.new_event(op.kind, op.device_id, op.user_id, op.body, source=op.source)
        _, projection = await append_and_project(self.store, self.projector, event)
        await projection

    async def settle(self) -> None:
        for _ in range(500):
            if self.projector.behind == 0 and self.projector.queued == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the projector did not catch up")


async def dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read-model table, in key order."""
    tables = {t: list(await db.fetchall(f"SELECT * FROM {t} ORDER BY {ORDER_BY[t]}")) for t in READ_MODEL_TABLES}
    if db.kind == "mysql":
        checksums = await db.fetchall(f"CHECKSUM TABLE {', '.join(READ_MODEL_TABLES)}")
        tables["checksums"] = [tuple(r[1:]) for r in checksums]
    return tables


def same(got: dict[str, list[tuple[Any, ...]]], expected: dict[str, list[tuple[Any, ...]]]) -> None:
    """Assert equal dumps, naming only the rows that differ."""
    diff = {
        table: {"only here": sorted(set(rows) - set(expected[table]), key=repr),
                "only there": sorted(set(expected[table]) - set(rows), key=repr)}
        for table, rows in got.items() if rows != expected[table]
    }  # fmt: skip
    assert not diff, diff


async def replayed(url: str, root: Path, workers: int = 1) -> dict[str, list[tuple[Any, ...]]]:
    db = await connect(url)
    try:
        report = await replay_logs(db, root, url=url, workers=workers)
        assert report.stopped == []
        return await dump(db)
    finally:
        await db.close()


async def check_log(live_url: str, replay_url: str, rounds: list[list[Op]], cut: int, workers: int = 1) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "logs"
        db = await connect(live_url)
        try:
            for url in (live_url, replay_url):  # nothing of an earlier example, pruned files' records included
                other = await connect(url)
                await drop_all(other)
                await other.close()
            first, second = rounds[: len(rounds) // 2 + 1], rounds[len(rounds) // 2 + 1 :]
            async with Live(db, root) as live:
                await live.ingest(first)
                now = live.now
            seen = await dump(db)
            assert seen["users"], "every generated log has at least one user"
            same(await replayed(replay_url, root, workers), seen)  # replay gives what live ingestion gave
            await rebuild(db, root)
            same(await dump(db), seen)  # and so does rebuild
            async with Live(db, root) as live:  # a restart, retention, more live ingestion
                live.now = now
                # Retention never reaches the file being written today.
                today = min(DAY0.date() + timedelta(days=cut + 1), now.date() + timedelta(days=1))
                await prune_logs(db, root, log_age=1, today=today)
                await live.ingest(second)
            same(await dump(db), await replayed(replay_url, root, workers))
        finally:
            await db.close()


def two_mysql_databases() -> Iterator[tuple[str, str]]:
    first, second = mysql_database_url(), mysql_database_url()
    yield next(first), next(second)
    for rest in (first, second):
        for _ in rest:  # drops the database
            pass


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(rounds=logs(), cut=st.integers(0, 2))
def test_sqlite_read_models_are_a_function_of_the_log(rounds: list[list[Op]], cut: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(check_log(f"sqlite:///{tmp}/live.db", f"sqlite:///{tmp}/replay.db", rounds, cut))


@pytest.fixture(scope="module")
def mysql_pair() -> Iterator[tuple[str, str]]:
    yield from two_mysql_databases()


@pytest.mark.mysql
@settings(PROPERTY, max_examples=15)
@given(rounds=logs(), cut=st.integers(0, 2))
def test_mariadb_read_models_are_a_function_of_the_log(
    mysql_pair: tuple[str, str], rounds: list[list[Op]], cut: int
) -> None:
    asyncio.run(check_log(*mysql_pair, rounds, cut))


@pytest.mark.mysql
@settings(PROPERTY, max_examples=3)
@given(rounds=logs(), cut=st.integers(0, 2))
def test_mariadb_replay_with_two_workers_equals_live(
    mysql_pair: tuple[str, str], rounds: list[list[Op]], cut: int
) -> None:
    asyncio.run(check_log(*mysql_pair, rounds, cut, workers=2))


def test_the_generated_logs_cover_the_hard_cases() -> None:
    """The generator reaches shared sensor ids, a changing owner and several days (a guard on the test)."""
    seen = {"shared sensor": False, "owner change": False, "days": set()}

    @settings(max_examples=200, deadline=None)
    @given(rounds=logs())
    def look(rounds: list[list[Op]]) -> None:
        ops = [op for ops in rounds for op in ops]
        sensors: dict[int, set[int]] = {}
        for op in ops:
            ids = [e["sensorsId"] for e in op.body.get("sensorsDates", [])] + [
                s["id"] for s in op.body.get("sensorsList", [])
            ]
            for s in ids:
                sensors.setdefault(s, set()).add(op.device_id)
            seen["days"].add(op.at.date())  # type: ignore[union-attr]
        seen["shared sensor"] |= any(len(d) > 1 for d in sensors.values())
        seen["owner change"] |= len({op.user_id for op in ops if op.device_id == 3}) > 1

    look()
    assert seen["shared sensor"] and seen["owner change"]
    assert len(seen["days"]) >= 3  # type: ignore[arg-type]
    assert min(seen["days"]) == date(2026, 3, 1)  # type: ignore[type-var]
