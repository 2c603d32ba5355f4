"""History: the newest readings of a device's sensors in a window, read from its log files.

The newest `limit` readings per sensor whose reading time lies in a window, each
reading once (first logged wins). The log is read newest first through its side index
(log_blocks: blocks of 64 lines with the byte range and the min/max reading time of
each). Blocks are visited in descending max reading time, each read with one seek, and
the walk stops as soon as no unread block can still change the answer. What the index
does not cover yet (the tail of the log: the newest indexed block, which may still grow,
and everything after it) is read straight from the files.

`histories` is the one entry point: the index is queried on the event loop, the files
are read in a worker thread, one hop for the tails and first blocks of every device
asked for, and one more per further page a device needs (rare).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from eventlog.events import BACKFILL, LEGACY, PUSH, SYNC
from eventlog.files import LogEnd, LogView, device_days, log_path
from projections.db import Database, Row
from projections.readings import (
    InvalidBody,
    Reading,
    backfill_readings,
    cached_reading_time,
    legacy_readings,
    parse_id,
    parse_platform_time,
    push_reading,
    sync_readings,
)
from projections.views import SensorView, platform_time

# Pages of blocks grow geometrically: the usual request needs two or three blocks,
# a sparse sensor or a large limit gets there in a few queries.
FIRST_PAGE = 4
MAX_PAGE = 256


@dataclass(frozen=True, slots=True)
class Window:
    """Reading times from `start` to `end`, both inclusive; None is unbounded."""

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, moment: datetime) -> bool:
        """Is this reading time inside the window?"""
        return (self.start is None or moment >= self.start) and (self.end is None or moment <= self.end)

    def reaches(self, newest: datetime) -> bool:
        """Can a sensor whose newest reading is at `newest` have readings in the window?"""
        return self.start is None or newest >= self.start


@dataclass(frozen=True, slots=True)
class Block:
    """One row of the side index: up to 64 lines of one file that hold readings."""

    day: str
    block_no: int
    start_offset: int
    end_offset: int
    min_recorded_at: datetime
    max_recorded_at: datetime


@dataclass(frozen=True, slots=True)
class LogPoint:
    """A byte position in a device's log: the day file and the offset in it."""

    day: str
    offset: int


Start = tuple[LogPoint | None, list[Block]]  # (where the tail begins, the first blocks of the walk)


class BlockIndex(Protocol):
    """The side index as the walk queries it (SqlBlockIndex; tests have an in-memory one)."""

    async def starts(self, device_ids: Sequence[int], window: Window, size: int) -> dict[int, Start]:
        """Per device: where the newest indexed block begins (from there on the log is read from the
        files; None: nothing is indexed) and the first `size` + 1 blocks that overlap the window, in
        descending (max reading time, day, block) order; the newest block may be among them."""
        ...

    async def before(
        self, device_id: int, window: Window, tail: LogPoint | None, after: Block | None, size: int
    ) -> list[Block]:
        """At most `size` blocks that overlap `window` and lie before `tail`, next after `after`
        in descending (max reading time, day, block) order (None: from the first)."""
        ...


async def histories(
    index: BlockIndex,
    root: Path,
    log: LogView,
    sensors: Mapping[int, Sequence[SensorView]],
    window: Window,
    limit: int,
) -> dict[int, dict[int, list[Reading]]]:
    """Per device of `sensors`, the newest `limit` readings in `window` of each of its sensors, newest first.

    `sensors` gives each device's sensors as the read model has them: a sensor whose newest
    reading is older than the window cannot hold the walk up. Only what `log` says is on
    disk is read.
    """
    wanted = [d for d, found in sensors.items() if found] if limit > 0 else []
    starts = await index.starts(wanted, window, FIRST_PAGE)
    walks = {d: _Walk(root, d, sensors[d], window, limit, starts[d][0], log.durable_end(d)) for d in wanted}
    loop = asyncio.get_running_loop()
    try:
        open_walks = await loop.run_in_executor(None, _first_steps, walks, starts)
        for walk in open_walks:
            page, size, settled = starts[walk.device_id][1], FIRST_PAGE, False
            while page and not settled:
                size = min(size * 4, MAX_PAGE)
                page = await index.before(walk.device_id, window, walk.tail, page[-1], size)
                settled = await loop.run_in_executor(None, walk.read_blocks, page)
    finally:
        for walk in walks.values():
            walk.close()
    return {d: walk.result() for d, walk in walks.items()}


async def paged_histories(
    index: BlockIndex,
    root: Path,
    log: LogView,
    sensors: Mapping[int, Sequence[SensorView]],
    window: Window,
    limit: int,
) -> tuple[dict[int, dict[int, list[Reading]]], dict[int, dict[int, datetime]]]:
    """`histories`, and per sensor that has older readings in the window the cursor of its next page: its
    oldest reading shown (to pass as the window's exclusive end). One reading more than the limit is read
    to know whether an older page exists."""
    if limit == 0:
        return await histories(index, root, log, sensors, window, 0), {}
    found = await histories(index, root, log, sensors, window, limit + 1)
    cursors: dict[int, dict[int, datetime]] = {}
    for device_id, by_sensor in found.items():
        for sensor_id, readings in by_sensor.items():
            if len(readings) > limit:
                del readings[limit:]
                cursors.setdefault(device_id, {})[sensor_id] = readings[-1].recorded_at
    return found, cursors


def _first_steps(walks: dict[int, _Walk], starts: dict[int, Start]) -> list[_Walk]:
    """In a thread: each walk's tail and first blocks; the walks that need more blocks."""
    unsettled = []
    for device_id, walk in walks.items():
        walk.read_tail()
        if starts[device_id][1] and not walk.read_blocks(starts[device_id][1]):
            unsettled.append(walk)
    return unsettled


class _Walk:
    """One device's history walk: the tail, then blocks newest first, until nothing can change the answer."""

    def __init__(
        self,
        root: Path,
        device_id: int,
        sensors: Sequence[SensorView],
        window: Window,
        limit: int,
        tail: LogPoint | None,
        end: LogEnd,
    ) -> None:
        self.root, self.device_id, self.tail, self.end = root, device_id, tail, end
        self._topk = _TopK(limit, [s.sensor_id for s in sensors], window)
        newest = [s.latest_recorded_at for s in sensors]
        self._waiting = [s.sensor_id for s, at in zip(sensors, newest, strict=True) if at and window.reaches(at)]
        self._files = ExitStack()
        self._reader = _BlockReader(root, device_id, self._files)

    def read_tail(self) -> None:
        """Offer every line from the tail on."""
        for point, raw in _tail_lines(self.root, self.device_id, self.tail, self.end):
            _scan_line(self._topk, point, raw)

    def read_blocks(self, page: list[Block]) -> bool:
        """Offer the lines of these blocks, in order; True once no further block can change the answer."""
        for block in page:
            if self.tail is not None and (block.day, block.start_offset) >= (self.tail.day, self.tail.offset):
                continue  # read as part of the tail already
            if self._topk.settled(self._waiting, block.max_recorded_at):
                return True
            for point, raw in self._reader.lines(block):
                _scan_line(self._topk, point, raw)
        return False

    def result(self) -> dict[int, list[Reading]]:
        """Each sensor's readings, newest first."""
        return self._topk.result()

    def close(self) -> None:
        """Close the files the walk opened."""
        self._files.close()


class _TopK:
    """Per sensor, the newest `k` readings seen so far; of equal readings the first logged."""

    def __init__(self, k: int, sensor_ids: list[int], window: Window) -> None:
        self.k = k
        self.window = window
        self.kept: dict[int, dict[datetime, tuple[LogPoint, Reading]]] = {s: {} for s in sensor_ids}
        self.heaps: dict[int, list[datetime]] = {s: [] for s in sensor_ids}
        self._full = 0
        # Once every sensor has k readings: the oldest reading time any of them still takes.
        self.floor: datetime | None = None

    def wants(self, sensor_id: int, moment: datetime) -> bool:
        """Could a reading of this sensor at this time be (or replace one) in the answer?"""
        heap = self.heaps.get(sensor_id)
        if heap is None or not self.window.contains(moment):
            return False
        return len(heap) < self.k or moment >= heap[0]

    def offer(self, point: LogPoint, reading: Reading) -> None:
        """Keep a reading that `wants` accepted."""
        kept, heap = self.kept[reading.sensor_id], self.heaps[reading.sensor_id]
        moment = reading.recorded_at
        held = kept.get(moment)
        if held is not None:
            if (point.day, point.offset) < (held[0].day, held[0].offset):
                kept[moment] = (point, reading)
            return
        if len(heap) >= self.k:
            del kept[heapq.heappushpop(heap, moment)]
        else:
            heapq.heappush(heap, moment)
            self._full += len(heap) == self.k
        kept[moment] = (point, reading)
        if self._full == len(self.heaps):
            self.floor = min(h[0] for h in self.heaps.values())

    def settled(self, sensor_ids: list[int], next_max: datetime) -> bool:
        """True when no reading at or before `next_max` can enter any of these sensors' answers."""
        return all(len(h) >= self.k and h[0] > next_max for h in (self.heaps[s] for s in sensor_ids))

    def result(self) -> dict[int, list[Reading]]:
        """Each sensor's readings, newest first."""
        return {s: [r for _, r in sorted(k.values(), key=_newest_first, reverse=True)] for s, k in self.kept.items()}


def _newest_first(item: tuple[LogPoint, Reading]) -> datetime:
    return item[1].recorded_at


class _BlockReader:
    """Reads blocks with one seek each, keeping each day's file open for the request."""

    def __init__(self, root: Path, device_id: int, files: ExitStack) -> None:
        self._root = root
        self._device_id = device_id
        self._files = files
        self._open: dict[str, IO[bytes] | None] = {}

    def lines(self, block: Block) -> list[tuple[LogPoint, bytes]]:
        """The complete lines of a block, last first; none if its file is gone (retention)."""
        handle = self._handle(block.day)
        if handle is None:
            return []
        handle.seek(block.start_offset)
        return _newest_first_lines(block.day, block.start_offset, handle.read(block.end_offset - block.start_offset))

    def _handle(self, day: str) -> IO[bytes] | None:
        if day not in self._open:
            try:
                self._open[day] = self._files.enter_context(open(log_path(self._root, self._device_id, day), "rb"))
            except FileNotFoundError:
                self._open[day] = None
        return self._open[day]


def _tail_lines(root: Path, device_id: int, tail: LogPoint | None, end: LogEnd) -> Iterator[tuple[LogPoint, bytes]]:
    """Every complete line from `tail` (or the first file) up to the end on disk, last first."""
    if end.day is None:
        return
    if tail is not None and end.day == tail.day:
        days = [tail.day]  # the store says nothing newer exists: no need to list the folder
    else:
        days = [d for d in device_days(root, device_id) if (tail is None or d >= tail.day) and d <= end.day]
    for day in reversed(days):
        start = tail.offset if tail is not None and day == tail.day else 0
        try:
            with open(log_path(root, device_id, day), "rb") as handle:
                handle.seek(start)
                data = handle.read(max(0, end.size - start)) if day == end.day else handle.read()
        except FileNotFoundError:
            continue
        yield from _newest_first_lines(day, start, data[: data.rfind(b"\n") + 1])


def _newest_first_lines(day: str, start: int, data: bytes) -> list[tuple[LogPoint, bytes]]:
    """The newline-terminated lines of `data` (read from `start` of the day's file), last first.

    Newest first, so once a sensor has its `limit` readings, older lines are passed over
    without building readings.
    """
    lines, offset = [], start
    for raw in data.split(b"\n")[:-1]:
        lines.append((LogPoint(day, offset), raw))
        offset += len(raw) + 1
    lines.reverse()
    return lines


def _scan_line(topk: _TopK, point: LogPoint, raw: bytes) -> None:
    """Offer the readings of one log line that can still matter."""
    try:
        doc = orjson.loads(raw)
        kind, body = doc["type"], doc["body"]
        if kind == PUSH:
            _scan_push(topk, point, body)
        elif kind in (SYNC, BACKFILL, LEGACY):
            if kind == SYNC:
                found = sync_readings(body)
            elif kind == BACKFILL:
                found = backfill_readings(body, doc.get("request"))
            else:
                found = legacy_readings(doc["deviceId"], body, doc.get("source"))
            for reading in found:
                if topk.wants(reading.sensor_id, reading.recorded_at):
                    topk.offer(point, reading)
    except (orjson.JSONDecodeError, InvalidBody, KeyError, TypeError, ValueError):
        return  # not an event line; `tlink-push verify` is the tool that reports those


def _scan_push(topk: _TopK, point: LogPoint, body: dict[str, Any]) -> None:
    """The readings of a push body, as projections.readings.parse_push makes them.

    Logged pushes passed parse_push before they were written, so the checks are not
    repeated; only readings that can enter the answer are built, and each distinct
    `times` of the body is dated once.
    """
    sent = parse_platform_time(body["time"], "time")
    dated: dict[Any, datetime] = {}
    for index, entry in enumerate(body["sensorsDates"]):
        moment = cached_reading_time(sent, entry.get("times"), index, dated)
        if topk.floor is not None and moment < topk.floor:
            continue  # older than what every sensor already has
        sensor_id = entry["sensorsId"]
        if type(sensor_id) is not int:
            sensor_id = parse_id(sensor_id, "sensorsId")
        if topk.wants(sensor_id, moment):
            topk.offer(point, push_reading(entry, sensor_id, moment))


# ---------------------------------------------------------------- the side index in SQL


_BLOCK_COLUMNS = "log_day, block_no, start_offset, end_offset, min_recorded_at, max_recorded_at"
_NEWEST_MAX_FIRST = "ORDER BY max_recorded_at DESC, log_day DESC, block_no DESC"


class SqlBlockIndex:
    """The side index in the log_blocks table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def starts(self, device_ids: Sequence[int], window: Window, size: int) -> dict[int, Start]:
        """Per device, in one query: the tail and the first `size` + 1 blocks (see BlockIndex)."""
        overlap, window_params = _overlaps(window)
        parts, params = [], []
        for n, device_id in enumerate(device_ids):
            parts.append(
                f"SELECT * FROM (SELECT 0 AS part, device_id, {_BLOCK_COLUMNS} FROM log_blocks WHERE device_id = %s"
                f" ORDER BY log_day DESC, block_no DESC LIMIT 1) AS tail{n}"
            )
            parts.append(
                f"SELECT * FROM (SELECT 1 AS part, device_id, {_BLOCK_COLUMNS} FROM log_blocks WHERE {overlap}"
                f" {_NEWEST_MAX_FIRST} LIMIT %s) AS page{n}"
            )
            params += [device_id, device_id, *window_params, size + 1]
        tails: dict[int, LogPoint] = {}
        pages: dict[int, list[Block]] = {d: [] for d in device_ids}
        for row in await self.db.fetchall(" UNION ALL ".join(parts), params) if parts else []:
            if int(row[0]) == 0:
                tails[int(row[1])] = LogPoint(str(row[2]), int(row[4]))
            else:
                pages[int(row[1])].append(_block(row[2:]))
        return {d: (tails.get(d), pages[d]) for d in device_ids}

    async def before(
        self, device_id: int, window: Window, tail: LogPoint | None, after: Block | None, size: int
    ) -> list[Block]:
        """The next `size` blocks before `tail` after `after` (see BlockIndex; None: from the newest)."""
        overlap, params = _overlaps(window)
        sql = [f"SELECT {_BLOCK_COLUMNS} FROM log_blocks WHERE {overlap}"]
        params.insert(0, device_id)
        if tail is not None:
            sql.append("AND (log_day < %s OR (log_day = %s AND start_offset < %s))")
            params += [tail.day, tail.day, tail.offset]
        if after is not None:
            sql.append("AND (max_recorded_at < %s OR (max_recorded_at = %s")
            sql.append("AND (log_day < %s OR (log_day = %s AND block_no < %s))))")
            params += [after.max_recorded_at, after.max_recorded_at, after.day, after.day, after.block_no]
        sql.append(f"{_NEWEST_MAX_FIRST} LIMIT %s")
        params.append(size)
        return [_block(r) for r in await self.db.fetchall(" ".join(sql), params)]


def _overlaps(window: Window) -> tuple[str, list[Any]]:
    """Blocks with readings whose [min, max] reading time overlaps the window."""
    sql, params = ["device_id = %s"], []
    if window.start is not None:
        sql.append("max_recorded_at >= %s")
        params.append(window.start)
    else:
        sql.append("max_recorded_at IS NOT NULL")
    if window.end is not None:
        sql.append("min_recorded_at <= %s")
        params.append(window.end)
    return " AND ".join(sql), params


def _block(row: Row) -> Block:
    low, high = platform_time(row[4]), platform_time(row[5])
    assert low is not None and high is not None  # the queries only return blocks with readings
    return Block(str(row[0]), int(row[1]), int(row[2]), int(row[3]), low, high)
