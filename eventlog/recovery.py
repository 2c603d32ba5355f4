"""Start-up repair: a line torn by a crash is moved aside, the rest of the file is kept."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from eventlog.events import BadLine, decode_line
from eventlog.files import device_days, device_ids, log_path

# A crash can leave at most the lines of one unfinished write; looking further back
# would only find lines that were acknowledged and fsynced.
MAX_TORN_LINES = 10_000


@dataclass(frozen=True, slots=True)
class Repair:
    """A torn tail that was cut from a log file and kept in a quarantine file."""

    path: Path
    quarantine: Path
    kept_bytes: int
    moved_bytes: int


def quarantine_path(path: Path) -> Path:
    """Where torn bytes of a log file are kept: next to it, never read as log."""
    return path.with_name(path.name + ".torn")


def repair_device(root: Path, device_id: int) -> Repair | None:
    """Cut a torn tail off the device's newest file (the only one ever appended to)."""
    days = device_days(root, device_id)
    if not days:
        return None
    path = log_path(root, device_id, days[-1])
    offset, data = _tail(path)
    keep = offset + _good_length(data)
    size = offset + len(data)
    if keep == size:
        return None
    target = quarantine_path(path)
    with open(target, "ab") as out:
        out.write(data[keep - offset :] + (b"" if data.endswith(b"\n") else b"\n"))
        out.flush()
        os.fsync(out.fileno())
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        os.fsync(handle.fileno())
    return Repair(path=path, quarantine=target, kept_bytes=keep, moved_bytes=size - keep)


def _tail(path: Path, size: int = 1 << 20) -> tuple[int, bytes]:
    """(offset, bytes) of the end of a file long enough to find its last good line.

    Reading only the tail keeps start-up from reading every device's whole file; the
    window doubles while the good part could begin before it.
    """
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        while True:
            offset = max(0, end - size)
            handle.seek(offset)
            data = handle.read(end - offset)
            if offset == 0 or _good_length(data) > 0:
                return offset, data
            size *= 2


def repair_all(root: Path) -> list[Repair]:
    """Repair every device folder under the root."""
    return [r for d in device_ids(root) if (r := repair_device(root, d)) is not None]


def _good_length(data: bytes) -> int:
    """Length of the prefix that ends with a newline and whose last lines are valid events."""
    keep = data.rfind(b"\n") + 1
    for _ in range(MAX_TORN_LINES):
        if keep == 0:
            return 0
        start = data.rfind(b"\n", 0, keep - 1) + 1
        try:
            decode_line(data[start : keep - 1])
            return keep
        except BadLine:
            keep = start
    return keep
