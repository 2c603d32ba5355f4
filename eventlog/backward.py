"""A device's log read backward: its complete lines newest first, and pages of its events as logged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from eventlog.files import LogEnd, device_days, log_path

REVERSE_CHUNK = 1 << 16



@dataclass(frozen=True, slots=True)
class RawLine:
    """One line of a log file as it stands, with where it stands."""

    file: str
    line_no: int
    raw: bytes


def newest_lines(
    root: Path, device_id: int, day: str | None = None, durable_end: LogEnd | None = None
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
    durable_end: LogEnd | None = None,
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
