"""Unit: reading history and raw events back from log files written by the real LogStore.

The side index comes from the real projector on the in-memory recorder; the answers are
checked against a brute-force read of every line with projections.readings.readings_of.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.backward import device_events, newest_lines
from eventlog.events import PUSH, SYNC, SYNC_FAILED, decode_line
from eventlog.files import device_days, log_path, read_lines
from eventlog.store import LogStore
from projections.history import FIRST_PAGE, Block, LogPoint, Window, histories
from projections.projector import Projector
from projections.readings import readings_of
from projections.recorder import MemoryRecorder
from projections.views import SensorView

DEVICE, USER = 2864, 385
T0 = datetime(2026, 5, 1, 22, 0, tzinfo=UTC)  # received; platform time is 8 hours ahead
ALL_TIMES = Window()


def push(time: datetime, values: dict[int, str], times: str | None = "same") -> dict:
    clock = time.strftime("%H:%M:%S") if times == "same" else times
    entries = [
        {"sensorsId": s, "value": v, "reVal": v + "0", "times": clock, "isAlarm": "0", "isLine": 1}
        for s, v in values.items()
    ]
    return {"flag": "00", "deviceId": DEVICE, "deviceUserid": USER, "time": f"{time:%Y-%m-%d %H:%M:%S}",
            "sensorsDates": entries}  # fmt: skip


def sync(updated: dict[int, datetime | None], value: str = "synced") -> dict:
    sensors = [
        {"id": s, "deviceId": DEVICE, "sensorName": f"S{s}", "value": value, "isAlarms": 0, "isLine": 1,
         "updateDate": None if at is None else f"{at:%Y-%m-%d %H:%M:%S}"}
        for s, at in updated.items()
    ]  # fmt: skip
    return {"id": DEVICE, "deviceName": "Tank", "sensorsList": sensors}


class Log:
    """A device log written by the real LogStore and indexed by the real projector."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.now = T0
        self.store = LogStore(root, clock=lambda: self.now)
        self.recorder = MemoryRecorder()
        self.fetched = 0

    async def __aenter__(self) -> Log:
        await self.store.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()

    async def add(self, type_: str, body: dict, after: timedelta = timedelta(seconds=10)) -> None:
        self.now += after
        await self.store.append(self.store.new_event(type_, DEVICE, USER, body))

    async def add_many(self, items: list[tuple[str, dict, timedelta]]) -> None:
        """Append in order, sharing flushes within each day."""
        by_day: dict[str, list] = {}
        for type_, body, after in items:
            self.now += after
            event = self.store.new_event(type_, DEVICE, USER, body)
            by_day.setdefault(event.day, []).append(event)
        for events in by_day.values():
            await asyncio.gather(*(self.store.append(e) for e in events))

    async def index(self) -> None:
        """Project everything logged so far (log_blocks/log_files and the read models)."""
        projector = Projector(self.recorder, self.root, self.store)
        await projector.apply_log()

    def sensors(self) -> dict[int, datetime | None]:
        """Sensor id -> newest reading time, as the sensors read model has it."""
        return {s: row.reading.recorded_at for (d, s), row in self.recorder.sensor_latest.items() if d == DEVICE}

    async def history(self, window: Window = ALL_TIMES, limit: int = 50, sensors: dict | None = None) -> dict:
        wanted = self.sensors() if sensors is None else sensors
        views = [SensorView(s, DEVICE, None, None, None, None, None, at, None, None, None) for s, at in wanted.items()]
        found = await histories(MemoryBlockIndex(self), self.root, self.store, {DEVICE: views}, window, limit)
        found = found.get(DEVICE, {s: [] for s in wanted})
        return {s: [(r.recorded_at, r.value, r.raw_value, r.sensor_timestamp) for r in rs] for s, rs in found.items()}

    def brute(self, window: Window = ALL_TIMES, limit: int = 50, sensors: dict | None = None) -> dict:
        """Every line read in log order: first logged wins, then newest first."""
        wanted = self.sensors() if sensors is None else sensors
        seen: dict = {}
        for day in device_days(self.root, DEVICE):
            for line in read_lines(log_path(self.root, DEVICE, day), 0, 1, day):
                event, _ = decode_line(line.raw)
                for r in readings_of(event):
                    if r.sensor_id in wanted and window.contains(r.recorded_at):
                        seen.setdefault((r.sensor_id, r.recorded_at), r)
        result = {}
        for sensor in wanted:
            mine = sorted((r for (s, _), r in seen.items() if s == sensor), key=lambda r: r.recorded_at, reverse=True)
            result[sensor] = [(r.recorded_at, r.value, r.raw_value, r.sensor_timestamp) for r in mine[:limit]]
        return result


class MemoryBlockIndex:
    """The side index as the in-memory recorder holds it, counting the blocks it hands out."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def _candidates(self, window: Window) -> list[Block]:
        blocks = [b for (d, _, _), b in self.log.recorder.blocks.items() if d == DEVICE]
        found = [
            Block(b.day, b.block_no, b.start_offset, b.end_offset, b.min_recorded_at, b.max_recorded_at)
            for b in blocks
            if b.max_recorded_at is not None
            and (window.start is None or b.max_recorded_at >= window.start)
            and (window.end is None or b.min_recorded_at <= window.end)
        ]
        return sorted(found, key=lambda b: (b.max_recorded_at, b.day, b.block_no), reverse=True)

    async def starts(self, device_ids: list[int], window: Window, size: int) -> dict:
        blocks = sorted((b for (d, _, _), b in self.log.recorder.blocks.items() if d == DEVICE),
                        key=lambda b: (b.day, b.block_no))  # fmt: skip
        tail = LogPoint(blocks[-1].day, blocks[-1].start_offset) if blocks else None
        page = self._candidates(window)[: size + 1]
        self.log.fetched += len(page)
        return {d: (tail, page) for d in device_ids}

    async def before(self, device_id: int, window: Window, tail, after: Block | None, size: int) -> list[Block]:
        candidates = [
            b for b in self._candidates(window) if tail is None or (b.day, b.start_offset) < (tail.day, tail.offset)
        ]
        if after is not None:  # strictly after it in (max reading time, day, block) descending order
            bound = (after.max_recorded_at, after.day, after.block_no)
            candidates = [b for b in candidates if (b.max_recorded_at, b.day, b.block_no) < bound]
        page = candidates[:size]
        self.log.fetched += len(page)
        return page


def platform(moment: datetime) -> datetime:
    return (moment + timedelta(hours=8)).replace(tzinfo=None)


async def test_late_delivery_in_a_later_days_file_is_in_its_window(log_root):
    async with Log(log_root) as log:
        first = platform(T0)
        for n in range(5):
            await log.add(PUSH, push(first + timedelta(minutes=n), {1: f"v{n}"}))
        await log.add(PUSH, push(first + timedelta(days=2), {1: "today"}), after=timedelta(days=2))
        await log.add(PUSH, push(first + timedelta(minutes=2, seconds=30), {1: "late"}))  # two days late
        await log.index()
        assert len(device_days(log_root, DEVICE)) == 2
        window = Window(first + timedelta(minutes=2), first + timedelta(minutes=3))
        found = await log.history(window)
        assert [v for _, v, _, _ in found[1]] == ["v3", "late", "v2"]
        assert found == log.brute(window)


async def test_a_reading_pushed_then_synced_is_shown_once_as_first_logged(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        await log.add(PUSH, push(at, {1: "5.0", 2: "7.0"}))
        for n in range(1, 100):  # the sync lands in another block
            await log.add(PUSH, push(at + timedelta(seconds=10 * n), {2: f"{n}"}))
        await log.add(SYNC, sync({1: at}, value="5.0 synced"))
        await log.index()
        found = await log.history(Window(at, at), limit=5)
        assert found[1] == [(at, "5.0", "5.00", at.strftime("%H:%M:%S"))]
        assert found == log.brute(Window(at, at), limit=5)


async def test_a_reading_synced_then_pushed_keeps_the_synced_version(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        await log.add(SYNC, sync({1: at}, value="from sync"))
        await log.add(PUSH, push(at, {1: "from push"}))
        await log.index()
        found = await log.history()
        assert found[1] == [(at, "from sync", None, f"{at:%Y-%m-%d %H:%M:%S}")]


async def test_window_bounds_are_inclusive(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        for n in range(3):
            await log.add(PUSH, push(at + timedelta(seconds=10 * n), {1: f"v{n}"}))
        await log.index()
        everything = await log.history(Window(at, at + timedelta(seconds=20)))
        assert [v for _, v, _, _ in everything[1]] == ["v2", "v1", "v0"]
        inside = await log.history(Window(at + timedelta(seconds=1), at + timedelta(seconds=19)))
        assert [v for _, v, _, _ in inside[1]] == ["v1"]
        assert await log.history(Window(at + timedelta(seconds=21), None)) == {1: []}


async def test_history_limit_counts_per_sensor(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        for n in range(200):
            values = {1: f"a{n}"} | ({2: f"b{n}"} if n % 20 == 0 else {})
            await log.add(PUSH, push(at + timedelta(seconds=10 * n), values))
        await log.index()
        found = await log.history(limit=3)
        assert [v for _, v, _, _ in found[1]] == ["a199", "a198", "a197"]
        assert [v for _, v, _, _ in found[2]] == ["b180", "b160", "b140"]
        assert await log.history(limit=0) == {1: [], 2: []}


async def test_the_unindexed_tail_is_read_from_the_files(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        for n in range(100):
            await log.add(PUSH, push(at + timedelta(seconds=10 * n), {1: f"v{n}"}))
        await log.index()
        for n in range(100, 120):  # the database was down: not indexed
            await log.add(PUSH, push(at + timedelta(seconds=10 * n), {1: f"v{n}"}))
        await log.add(PUSH, push(at + timedelta(days=1), {1: "next day"}), after=timedelta(days=1))
        found = await log.history(limit=3)
        assert [v for _, v, _, _ in found[1]] == ["next day", "v119", "v118"]
        assert found == log.brute(limit=3)


async def test_with_no_index_at_all_the_files_are_read(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        for n in range(70):
            await log.add(PUSH, push(at + timedelta(seconds=10 * n), {1: f"v{n}"}))
        found = await log.history(limit=2, sensors={1: None})
        assert [v for _, v, _, _ in found[1]] == ["v69", "v68"]


async def test_a_long_log_is_read_only_near_its_end(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        items = [(PUSH, push(at + timedelta(seconds=10 * n), {1: str(n), 2: str(n)}), timedelta(seconds=10))
                 for n in range(3000)]  # fmt: skip
        await log.add_many(items)
        await log.index()
        found = await log.history(limit=50)
        assert [v for _, v, _, _ in found[1]] == [str(n) for n in range(2999, 2949, -1)]
        assert log.fetched <= FIRST_PAGE + 1  # 47 blocks in the index; a handful looked at
        log.fetched = 0
        window = Window(at + timedelta(seconds=10 * 1000), at + timedelta(seconds=10 * 1100))
        found = await log.history(window, limit=50)
        assert [v for _, v, _, _ in found[1]] == [str(n) for n in range(1100, 1050, -1)]
        assert log.fetched <= FIRST_PAGE + 1


async def test_a_sensor_with_no_readings_does_not_hold_the_walk_up(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        await log.add_many([(PUSH, push(at + timedelta(seconds=10 * n), {1: str(n)}), timedelta(seconds=10))
                            for n in range(1000)])  # fmt: skip
        await log.add(SYNC, sync({1: None, 9: None}))  # sensor 9 never reported
        await log.index()
        found = await log.history(limit=5, sensors={1: platform(T0), 9: None})
        assert found[9] == [] and len(found[1]) == 5
        assert log.fetched <= FIRST_PAGE + 1


async def test_lines_past_the_durable_end_are_not_read(log_root):
    async with Log(log_root) as log:
        at = platform(T0)
        await log.add(PUSH, push(at, {1: "durable"}))
        day, _ = log.store.durable_end(DEVICE)
        with open(log_path(log_root, DEVICE, day), "ab") as handle:  # written, not yet acknowledged
            handle.write(b'{"v":1,"type":"push","body":{"time":"2030-01-01 00:00:00","sensorsDates":[]}}\n')
        found = await log.history(sensors={1: None})
        assert [v for _, v, _, _ in found[1]] == ["durable"]


# ---------------------------------------------------------------- property: equal to brute force


def _event(draw: st.DrawFn, base: datetime) -> tuple[str, dict, timedelta]:
    kind = draw(st.sampled_from([PUSH, PUSH, PUSH, SYNC, SYNC_FAILED]))
    after = timedelta(minutes=draw(st.integers(0, 2) | st.integers(0, 600)))  # many lines a file, several files
    sent = base + timedelta(minutes=draw(st.integers(0, 600)))  # late and early deliveries both
    sensors = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4, unique=True))
    if kind == PUSH:
        times = draw(st.sampled_from(["same", "same", None, "", "23:59:59", "00:00:00"]))
        return kind, push(sent, {s: draw(st.sampled_from(["a", "b", "c"])) for s in sensors}, times), after
    if kind == SYNC:
        return kind, sync({s: draw(st.sampled_from([sent, None])) for s in sensors}), after
    return kind, {"error": "timeout"}, after


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    base = platform(T0)
    events = [_event(draw, base) for _ in range(draw(st.integers(1, 220)))]
    start = draw(st.none() | st.integers(0, 600).map(lambda m: base + timedelta(minutes=m)))
    span = draw(st.none() | st.integers(0, 300).map(lambda m: timedelta(minutes=m)))
    end = None if span is None else (start or base) + span
    return {
        "events": events,
        "indexed": draw(st.integers(0, len(events))),
        "window": Window(start, end),
        "limit": draw(st.integers(0, 12)),
    }


async def _check(root: Path, case: dict) -> None:
    async with Log(root) as log:
        await log.add_many(case["events"][: case["indexed"]])
        await log.index()
        await log.add_many(case["events"][case["indexed"] :])
        sensors = {s: log.sensors().get(s) for s in (1, 2, 3, 4)}
        found = await log.history(case["window"], case["limit"], sensors)
        assert found == log.brute(case["window"], case["limit"], sensors)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_history_equals_a_brute_force_read_of_every_line(case):
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_check(Path(tmp) / "logs", case))


# ---------------------------------------------------------------- raw events


async def _events_log(log_root: Path) -> Log:
    log = Log(log_root)
    await log.store.open()
    at = platform(T0)
    for n in range(5):
        await log.add(PUSH, push(at + timedelta(seconds=n), {1: str(n)}))
    await log.add(SYNC, sync({1: at}), after=timedelta(hours=3))  # the next UTC day
    await log.add(PUSH, push(at + timedelta(hours=3), {1: "5"}))
    return log


async def test_events_are_newest_first_with_file_and_line(log_root):
    log = await _events_log(log_root)
    try:
        items, more = device_events(log_root, DEVICE, 0, 3, durable_end=log.store.durable_end(DEVICE))
        days = device_days(log_root, DEVICE)
        assert [(i["file"], i["line"], i["type"]) for i in items] == [
            (f"device{DEVICE}-{days[1]}.log", 2, PUSH),
            (f"device{DEVICE}-{days[1]}.log", 1, SYNC),
            (f"device{DEVICE}-{days[0]}.log", 5, PUSH),
        ]
        assert more
        raw = log_path(log_root, DEVICE, days[1]).read_bytes().splitlines()[1]
        item = dict(items[0])
        del item["file"], item["line"]
        assert item == orjson.loads(raw)
        rest, more = device_events(log_root, DEVICE, 3, 10)
        assert [i["line"] for i in rest] == [4, 3, 2, 1] and not more
    finally:
        await log.store.close()


async def test_events_filter_by_day_and_type(log_root):
    log = await _events_log(log_root)
    try:
        days = device_days(log_root, DEVICE)
        items, _ = device_events(log_root, DEVICE, 0, 10, day=days[0])
        assert [i["line"] for i in items] == [5, 4, 3, 2, 1]
        items, more = device_events(log_root, DEVICE, 0, 10, type_=SYNC)
        assert [(i["type"], i["line"]) for i in items] == [(SYNC, 1)] and not more
        items, more = device_events(log_root, DEVICE, 1, 1, type_=PUSH)
        assert [i["line"] for i in items] == [5] and more
        assert device_events(log_root, DEVICE, 0, 10, day="2001-01-01") == ([], False)
    finally:
        await log.store.close()


def test_reverse_reading_numbers_lines_and_skips_an_unfinished_last_line(log_root):
    path = log_path(log_root, DEVICE, "2026-05-01")
    path.parent.mkdir(parents=True)
    lines = [b'{"type":"push","n":%d,"pad":"%s"}' % (n, b"x" * (n * 997 % 70_000)) for n in range(60)]
    path.write_bytes(b"\n".join(lines) + b"\nnot json\n{unfinished")
    found = list(newest_lines(log_root, DEVICE))
    assert [(r.line_no, r.raw) for r in found] == [(61, b"not json")] + [(n + 1, lines[n]) for n in range(59, -1, -1)]
    items, _ = device_events(log_root, DEVICE, 0, 1)
    assert items[0]["line"] == 61 and items[0]["raw"] == "not json" and "error" in items[0]
