"""Retention of the daily files: which are past LOG_AGE, what they hold, and deleting them.

Pure file logic, no database. A caller that deletes hash-chained device files must
first record each one's line count and last-line hash (`summarize`) where `verify`
finds them, so the oldest kept file can still be checked against the cut. Only names
matching the daily patterns are ever touched: quarantine (`.torn`) files, `rejected/`
and anything else under the root are left alone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from eventlog.events import line_hash
from eventlog.files import device_days, device_dir, device_ids, log_path, read_lines

SYNC_FAILURES_DIR = "sync-failures"
_SYNC_FAILURES_RE = re.compile(r"^sync-failures-(\d{4}-\d{2}-\d{2})\.log$")


@dataclass(frozen=True, slots=True)
class ExpiredFile:
    """A daily file whose day is before the cutoff."""

    path: Path
    day: str
    device_id: int | None  # None for a sync-failures file, which is not hash-chained


@dataclass(frozen=True, slots=True)
class FileSummary:
    """What a file holds: complete lines, their bytes, the last one's hash."""

    line_count: int
    byte_count: int
    last_hash: str | None  # None when the file has no complete line
    hash_at: str | None = None  # hash of the line asked for, if the file has it


def cutoff_day(today: date, log_age: int) -> str:
    """The first day kept: a file of day D is expired when D < today - log_age days."""
    return (today - timedelta(days=log_age)).isoformat()


def sync_failures_path(root: Path, day: str) -> Path:
    """<root>/sync-failures/sync-failures-YYYY-MM-DD.log"""
    return root / SYNC_FAILURES_DIR / f"sync-failures-{day}.log"


def expired_files(root: Path, cutoff: str) -> list[ExpiredFile]:
    """Device log files and sync-failures files of days before `cutoff`, oldest first per device."""
    result = []
    for device_id in device_ids(root):
        for day in device_days(root, device_id):
            if day < cutoff and _is_date(day):
                result.append(ExpiredFile(log_path(root, device_id, day), day, device_id))
    folder = root / SYNC_FAILURES_DIR
    if folder.is_dir():
        for name in sorted(os.listdir(folder)):
            match = _SYNC_FAILURES_RE.match(name)
            if match and match.group(1) < cutoff and _is_date(match.group(1)) and (folder / name).is_file():
                result.append(ExpiredFile(folder / name, match.group(1), None))
    return result


def summarize(path: Path, check_line: int | None = None) -> FileSummary:
    """Count a file's complete lines and hash its last one (and line `check_line`)."""
    count, end, last_raw, at = 0, 0, None, None
    for line in read_lines(path):
        count, end, last_raw = line.line_no, line.end, line.raw
        if line.line_no == check_line:
            at = line_hash(line.raw)
    return FileSummary(count, end, None if last_raw is None else line_hash(last_raw), at)


def delete_files(paths: list[Path]) -> list[Path]:
    """Delete the files; returns those this call removed (ones gone already or undeletable are left out)."""
    deleted = []
    for path in paths:
        try:
            path.unlink()
        except OSError:
            continue
        deleted.append(path)
    return deleted


def remove_empty_device_dirs(root: Path, device_ids: list[int]) -> list[Path]:
    """Remove the folders of these devices that are empty; returns the folders removed."""
    removed = []
    for device_id in device_ids:
        folder = device_dir(root, device_id)
        try:
            folder.rmdir()  # refuses atomically when anything (a new log, a .torn file) is inside
        except OSError:
            continue
        removed.append(folder)
    return removed


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
