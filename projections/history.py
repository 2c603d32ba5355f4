"""Reading a device's history and raw events back from its log files.

History: the newest `limit` readings per sensor whose reading time lies in a window,
each reading once (first logged wins). The log is read newest first through its side
index: blocks of 64 lines with the byte range and the min/max reading time of each.
Blocks are visited in descending max reading time, each read with one seek, and the
walk stops as soon as no unread block can still change the answer. What the index
does not cover yet (the tail of the log: the newest indexed block, which may still
grow, and everything after it) is read straight from the files.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from eventlog.events import PUSH, SYNC
from eventlog.files import device_days, log_path
from projections.readings import (
    InvalidBody,
    Reading,
    cached_reading_time,
    parse_id,
    parse_platform_time,
    push_reading,
    sync_readings,
)

# Pages of blocks grow geometrically: the usual request needs two or three blocks,
# a sparse sensor or a large limit gets there in a few queries.
FIRST_PAGE = 4
MAX_PAGE = 256
REVERSE_CHUNK = 1 << 16

DurableEnd = tuple[str | None, int]  # (newest day, bytes of it on disk)


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


# (the last block already returned or None, how many) -> the next blocks that overlap the
# window, lying before the tail, ordered by (max_recorded_at, day, block_no) descending.
FetchBlocks = Callable[[Block | None, int], Awaitable[list[Block]]]


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


async def read_history(
    root: Path,
    device_id: int,
    sensors: Mapping[int, datetime | None],
    window: Window,
    limit: int,
    tail: LogPoint | None,
    fetch_blocks: FetchBlocks,
    durable_end: DurableEnd | None = None,
) -> dict[int, list[Reading]]:
    """The newest `limit` readings in `window` of each sensor in `sensors`, newest first.

    `sensors` maps each sensor id to its newest known reading time (None: none known);
    a sensor whose newest reading is older than the window cannot hold the walk up.
    `tail` is where the part of the log that the index may not fully cover begins (the
    start of the newest indexed block; None: nothing is indexed). `durable_end` bounds
    the read to what the log store has flushed.
    """
    topk = _TopK(limit, list(sensors), window)
    if limit <= 0 or not sensors:
        return topk.result()
    waiting = [s for s, newest in sensors.items() if newest is not None and window.reaches(newest)]
    with ExitStack() as files:
        reader = _BlockReader(root, device_id, files)
        for point, raw in _tail_lines(root, device_id, tail, durable_end):
            _scan_line(topk, point, raw)
        cursor: Block | None = None
        size = FIRST_PAGE
        while page := await fetch_blocks(cursor, size):
            for block in page:
                if tail is not None and (block.day, block.start_offset) >= (tail.day, tail.offset):
                    continue  # read as part of the tail already
                if topk.settled(waiting, block.max_recorded_at):
                    return topk.result()
                for point, raw in reader.lines(block):
                    _scan_line(topk, point, raw)
            cursor, size = page[-1], min(size * 4, MAX_PAGE)
    return topk.result()


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


def _tail_lines(
    root: Path, device_id: int, tail: LogPoint | None, durable_end: DurableEnd | None
) -> Iterator[tuple[LogPoint, bytes]]:
    """Every complete line from `tail` (or the first file) up to the durable end, last first."""
    end_day, end_size = durable_end if durable_end is not None else (None, 0)
    if durable_end is not None and end_day is None:
        return
    if tail is not None and end_day == tail.day:
        days = [tail.day]  # the store says nothing newer exists: no need to list the folder
    else:
        days = [d for d in device_days(root, device_id) if tail is None or d >= tail.day]
    for day in reversed(days):
        if end_day is not None and day > end_day:
            continue
        start = tail.offset if tail is not None and day == tail.day else 0
        try:
            with open(log_path(root, device_id, day), "rb") as handle:
                handle.seek(start)
                data = handle.read(max(0, end_size - start)) if day == end_day else handle.read()
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
        elif kind == SYNC:
            for reading in sync_readings(body):
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


# ---------------------------------------------------------------- raw events, newest first


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line of a log file as it stands, with where it stands."""

    file: str
    line_no: int
    raw: bytes


def newest_lines(
    root: Path, device_id: int, day: str | None = None, durable_end: DurableEnd | None = None
) -> Iterator[RawLine]:
    """A device's complete log lines, newest first (only `day`'s file when given)."""
    end_day, end_size = durable_end if durable_end is not None else (None, 0)
    days = device_days(root, device_id)
    for file_day in reversed(days if day is None else [d for d in days if d == day]):
        if end_day is not None and file_day > end_day:
            continue
        path = log_path(root, device_id, file_day)
        try:
            yield from _reverse_file(path, end_size if file_day == end_day else None)
        except FileNotFoundError:
            continue  # deleted by retention meanwhile


def _reverse_file(path: Path, limit: int | None) -> Iterator[RawLine]:
    """The complete lines of one file (up to byte `limit`), last first, numbered from the top."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        stop = _last_newline(handle, size if limit is None else min(limit, size))
        if stop < 0:
            return
        line_no = _count_newlines(handle, stop + 1)
        pending, pos = b"", stop
        while pos > 0:
            step = min(REVERSE_CHUNK, pos)
            pos -= step
            handle.seek(pos)
            parts = (handle.read(step) + pending).split(b"\n")
            pending = parts[0]
            for raw in reversed(parts[1:]):
                yield RawLine(path.name, line_no, raw)
                line_no -= 1
        yield RawLine(path.name, line_no, pending)


def _last_newline(handle: IO[bytes], end: int) -> int:
    """Offset of the last newline before `end`, or -1: an unfinished last line is left out."""
    pos = end
    while pos > 0:
        step = min(REVERSE_CHUNK, pos)
        handle.seek(pos - step)
        cut = handle.read(step).rfind(b"\n")
        if cut >= 0:
            return pos - step + cut
        pos -= step
    return -1


def _count_newlines(handle: IO[bytes], end: int) -> int:
    handle.seek(0)
    count, left = 0, end
    while left > 0 and (chunk := handle.read(min(1 << 20, left))):
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def device_events(
    root: Path,
    device_id: int,
    skip: int,
    take: int,
    day: str | None = None,
    type_: str | None = None,
    durable_end: DurableEnd | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """A page of a device's events as logged, newest first: (items, whether more follow).

    Each item is the line's JSON object plus `file` and `line`; a line that is not a
    JSON object is given as `raw` text with an `error`.
    """
    items: list[dict[str, Any]] = []
    for line in newest_lines(root, device_id, day, durable_end):
        doc = _line_object(line) if type_ is not None or skip <= 0 else None
        if type_ is not None and (doc is None or doc.get("type") != type_):
            continue
        if skip > 0:
            skip -= 1
            continue
        if len(items) == take:
            return items, True
        items.append(doc if doc is not None else _line_object(line))
    return items, False


def _line_object(line: RawLine) -> dict[str, Any]:
    try:
        doc = orjson.loads(line.raw)
    except orjson.JSONDecodeError as exc:
        return {"file": line.file, "line": line.line_no, "raw": line.raw.decode("utf-8", "replace"), "error": str(exc)}
    if not isinstance(doc, dict):
        return {"file": line.file, "line": line.line_no, "raw": line.raw.decode("utf-8", "replace"),
                "error": "not a JSON object"}  # fmt: skip
    doc["file"], doc["line"] = line.file, line.line_no
    return doc
