"""Reading devices' logs past their applied positions, as placed events.

A device's lines are read in order from its position up to the end of its log on disk,
and stop at the first line that is not an event of that device: that line is where the
device's projection stops (DeviceStop), never a line skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eventlog.events import BadLine
from eventlog.files import LogView, device_days, log_path, read_lines
from eventlog.foreign import describe_line
from projections.changes import Placed, placed_line
from projections.recorder import Position


@dataclass(frozen=True, slots=True)
class DeviceStop:
    """The line a device's projection stopped at: every line before it is applied, none after."""

    device_id: int
    day: str
    line_no: int
    event_id: str | None  # None when the line is not an event at all
    reason: str

    def describe(self, root: Path) -> str:
        """One sentence naming the file, the line and the reason."""
        event = f" (event {self.event_id})" if self.event_id else ""
        return f"{log_path(root, self.device_id, self.day)} line {self.line_no}{event}: {self.reason}"


@dataclass(slots=True)
class Lines:
    """What one read of several devices' logs found."""

    placed: list[Placed]
    complete: list[int]  # devices read up to the end of their log on disk, or up to their stop
    stops: list[DeviceStop]


def read_behind(root: Path, log: LogView, devices: list[int], cursor: dict[int, Position], budget: int) -> Lines:
    """Up to `budget` lines past `cursor` (which is advanced) of these devices, device after device."""
    found = Lines([], [], [])
    for device_id in devices:
        if len(found.placed) >= budget:
            break
        lines, reached_end, stop = read_from(root, log, device_id, cursor.get(device_id), budget - len(found.placed))
        found.placed.extend(lines)
        if lines:
            last = lines[-1]
            cursor[device_id] = Position(last.day, last.line_no, last.end, last.hash)
        if reached_end:
            found.complete.append(device_id)
        if stop is not None:
            found.stops.append(stop)
    return found


def read_from(
    root: Path, log: LogView, device_id: int, pos: Position | None, budget: int
) -> tuple[list[Placed], bool, DeviceStop | None]:
    """Lines of a device's log after `pos`, up to the end on disk or the first line that is not one of
    its events; (lines, whether that end or that line was reached, why that line is not an event)."""
    end = log.durable_end(device_id)
    result: list[Placed] = []
    for day in device_days(root, device_id):
        if pos is not None and day < pos.day:
            continue
        if end.day is not None and day > end.day:
            break
        start, line_no = (pos.byte_count, pos.line_count + 1) if pos is not None and day == pos.day else (0, 1)
        stop_at = end.size if day == end.day else None
        for line in read_lines(log_path(root, device_id, day), start, line_no, day):
            if stop_at is not None and line.end > stop_at:
                break
            if len(result) >= budget:
                return result, False, None
            try:
                placed = placed_line(line)
            except BadLine:
                reason = f"not a valid event line: {describe_line(line.raw)}"
                return result, True, DeviceStop(device_id, day, line.line_no, None, reason)
            if placed.event.device_id != device_id:
                reason = f"the event names device {placed.event.device_id}"
                return result, True, DeviceStop(device_id, day, line.line_no, placed.event.id, reason)
            result.append(placed)
    return result, True, None
