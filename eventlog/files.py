"""Layout of the log root: one folder per device, one file per device per UTC day."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from eventlog.events import EventLogError

# A log file's name, or (group 3 set) the name of a file set aside next to one: `.torn`
# (bytes start-up cut off a torn tail), `.foreign` (a whole file start-up found is not of
# this log) or `.replaced` (what the store kept of a live file replaced behind it), each
# with a number after it when the plain name was taken.
_NAME_RE = re.compile(r"^device(\d+)-(\d{4}-\d{2}-\d{2})\.log(?:\.(torn|foreign|replaced)(?:\.\d+)?)?$")
READ_CHUNK = 1 << 20
FIRST_LINE_LIMIT = 16 * READ_CHUNK  # looking for a first newline stops here


@dataclass(frozen=True, slots=True)
class LogLine:
    """One complete line of a log file and where it stands."""

    day: str
    line_no: int  # 1-based
    offset: int  # byte offset of the line's first byte
    raw: bytes  # without the newline

    @property
    def end(self) -> int:
        """Offset just past this line's newline."""
        return self.offset + len(self.raw) + 1


class LogEnd(NamedTuple):
    """Where a device's log ends: its newest file holding a line and that file's size (day None: no line yet)."""

    day: str | None
    size: int


class LogView(Protocol):
    """What readers of the log (the projector, history) need to know of it: its devices and, per
    device, the end of what is on disk (nothing past it is still being written)."""

    def devices(self) -> list[int]:
        """Devices with a folder under the root, ascending."""
        ...

    def durable_end(self, device_id: int) -> LogEnd:
        """The end of the device's log that is on disk."""
        ...


class LogFiles:
    """A log root as its files stand, for a process that does not append to it (replay, rebuild).

    Every question reads the folder again, so lines another process appends meanwhile are
    seen on the next one; a last line still being written is not a complete line, and every
    reader of lines stops before it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def devices(self) -> list[int]:
        """Devices with a folder under the root, ascending."""
        return device_ids(self.root)

    def durable_end(self, device_id: int) -> LogEnd:
        """The newest file holding a complete line, and its size."""
        for day in reversed(device_days(self.root, device_id)):
            raw, size = last_line_and_size(log_path(self.root, device_id, day))
            if raw is not None:  # an empty file: the log ends in the file before it
                return LogEnd(day, size)
        return LogEnd(None, 0)


def device_dir(root: Path, device_id: int) -> Path:
    """The folder of one device; the id must already be an int (never user text)."""
    if not isinstance(device_id, int) or isinstance(device_id, bool) or device_id <= 0:
        raise EventLogError(f"device id must be a positive integer, got {device_id!r}")
    return root / str(device_id)


def log_path(root: Path, device_id: int, day: str) -> Path:
    """logs/<deviceId>/device<deviceId>-YYYY-MM-DD.log"""
    return device_dir(root, device_id) / f"device{device_id}-{day}.log"


def device_ids(root: Path) -> list[int]:
    """Devices that have a folder under the root, ascending (a folder named "0" is not a device)."""
    if not root.is_dir():
        return []
    return sorted(d for p in root.iterdir() if p.name.isdigit() and p.is_dir() and (d := int(p.name)) > 0)


def device_days(root: Path, device_id: int) -> list[str]:
    """Days that have a log file for the device, oldest first."""
    return sorted(match.group(2) for match in _names(root, device_id) if match.group(3) is None)


def side_files(root: Path, device_id: int) -> list[Path]:
    """The `.torn`, `.foreign` and `.replaced` files in a device's folder, by name (never read as log)."""
    folder = device_dir(root, device_id)
    return sorted(folder / match.string for match in _names(root, device_id) if match.group(3) is not None)


def _names(root: Path, device_id: int) -> Iterator[re.Match[str]]:
    """The matches of the names in a device's folder that are the device's log or side files."""
    folder = device_dir(root, device_id)
    if not folder.is_dir():
        return
    for name in os.listdir(folder):
        match = _NAME_RE.match(name)
        if match and int(match.group(1)) == device_id:
            yield match


def first_line(path: Path, limit: int = FIRST_LINE_LIMIT) -> tuple[bytes, bool] | None:
    """(first line without its newline, True) of a file; (its first bytes, False) when no newline
    comes within `limit` bytes; None for an empty file. Reads no further than it must."""
    with open(path, "rb") as handle:
        data = b""
        while len(data) < limit and (chunk := handle.read(min(8192 if not data else READ_CHUNK, limit - len(data)))):
            stop = chunk.find(b"\n")
            if stop >= 0:
                return data + chunk[:stop], True
            data += chunk
    return (data, False) if data else None


def read_lines(path: Path, start: int = 0, line_no: int = 1, day: str = "") -> Iterator[LogLine]:
    """Complete lines of a file from byte offset `start`; an unterminated tail is not yielded."""
    with open(path, "rb") as handle:
        handle.seek(start)
        offset, pending = start, b""
        while chunk := handle.read(READ_CHUNK):
            pending += chunk
            parts = pending.split(b"\n")
            pending = parts.pop()
            for raw in parts:
                yield LogLine(day=day, line_no=line_no, offset=offset, raw=raw)
                offset += len(raw) + 1
                line_no += 1


def last_line_and_size(path: Path) -> tuple[bytes | None, int]:
    """The file's last complete line (without newline; None if it has none) and its size in bytes."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        return line_ending_at(handle, complete_end(handle, size)), size


def complete_end(handle: BinaryIO, size: int) -> int:
    """The offset just past the last newline within the first `size` bytes of an open file (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(READ_CHUNK // 16, pos)
        pos -= step
        handle.seek(pos)
        stop = handle.read(step).rfind(b"\n")
        if stop >= 0:
            return pos + stop + 1
    return 0


def line_ending_at(handle: BinaryIO, end: int) -> bytes | None:
    """The line (without newline) whose newline is the byte before `end` of an open file (None when there is none)."""
    if end == 0:
        return None
    pos, tail = end - 1, b""
    handle.seek(pos)
    if handle.read(1) != b"\n":
        return None
    while pos > 0:
        step = min(READ_CHUNK // 16, pos)
        pos -= step
        handle.seek(pos)
        tail = handle.read(step) + tail
        stop = tail.rfind(b"\n")
        if stop >= 0:
            return tail[stop + 1 :]
    return tail


def fsync_dir(path: Path) -> None:
    """Make a new directory entry durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, line: bytes) -> None:
    """Append bytes to a file and fsync it (and its new folder's entry, when the folder is new)."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
