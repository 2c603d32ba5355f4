"""Log retention with the database: record each due file as pruned, delete it, rebuild.

The files' side (which are due, deleting them, empty folders) is eventlog.retention;
this keeps `log_files` able to vouch for the oldest remaining file's first link, drops
the pruned files' rows from `events` and `log_blocks`, and rebuilds the read models
from the remaining files, so that they are what a replay of the log now gives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from eventlog.events import utc_now
from eventlog.retention import (
    ExpiredFile,
    FileSummary,
    cutoff_day,
    delete_files,
    expired_files,
    remove_empty_device_dirs,
    summarize,
)
from projections.db import Database, DatabaseError
from projections.rebuild import RebuildReport, rebuild


@dataclass(slots=True)
class PruneReport:
    """What one retention pass did."""

    cutoff: str  # files of days before this were due
    deleted: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    lines: int = 0  # lines in the deleted device files
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # due but kept, with the reason
    waiting: int = 0  # due device files kept because the database could not be reached
    db_error: str | None = None
    rebuilt: RebuildReport | None = None  # the read models rebuilt from the remaining files

    @property
    def kept(self) -> int:
        """Due files kept, for whatever reason."""
        return len(self.skipped) + self.waiting


Recorded = dict[tuple[int, str], tuple[int, str]]  # (device, day) -> (line_count, last_hash)


async def prune_logs(
    db: Database, root: Path, log_age: int, today: date | None = None, dry_run: bool = False
) -> PruneReport:
    """Delete daily files older than `log_age` days; each device file's log_files row is marked pruned first."""
    report = PruneReport(cutoff_day(today or utc_now().date(), log_age))
    loop = asyncio.get_running_loop()
    expired = await loop.run_in_executor(None, expired_files, root, report.cutoff)
    if dry_run:
        report.deleted = [f.path for f in expired]
        return report
    unchained = [f.path for f in expired if f.device_id is None]
    by_device: dict[int, list[ExpiredFile]] = {}
    for f in expired:
        if f.device_id is not None:
            by_device.setdefault(f.device_id, []).append(f)
    approved: list[Path] = []
    if by_device:
        try:
            recorded = await _recorded(db, report.cutoff)
        except DatabaseError as exc:
            report.db_error, report.waiting = str(exc), sum(len(files) for files in by_device.values())
        else:
            for device_id, files in by_device.items():
                approved += await _mark_pruned(db, device_id, files, recorded, report)
    wanted = unchained + approved
    report.deleted = await loop.run_in_executor(None, delete_files, wanted)
    gone = set(report.deleted)
    report.skipped += [(path, "could not be deleted") for path in wanted if path not in gone]
    # On the event loop thread, like the store's folder creation: a push can never find
    # its device's folder removed between the store's check and its open.
    report.folders = remove_empty_device_dirs(root, sorted(by_device))
    if set(report.deleted) - set(unchained):  # device files went: their rows must go too
        try:
            report.rebuilt = await rebuild(db, root)
        except DatabaseError as exc:  # the next pass, or `tlink-push rebuild`, does it
            report.db_error = f"read models not rebuilt after deleting files: {exc}"
    return report


async def _recorded(db: Database, cutoff: str) -> Recorded:
    rows = await db.fetchall(
        "SELECT device_id, log_day, line_count, last_hash FROM log_files WHERE log_day < %s", [cutoff]
    )
    return {(int(r[0]), str(r[1])): (int(r[2]), str(r[3])) for r in rows}


async def _mark_pruned(
    db: Database, device_id: int, files: list[ExpiredFile], recorded: Recorded, report: PruneReport
) -> list[Path]:
    """Record each file's line count and last hash as pruned; returns the files now safe to delete."""
    checks = [recorded.get((device_id, f.day), (None, None))[0] for f in files]
    summaries = await asyncio.get_running_loop().run_in_executor(None, _summaries, files, checks)
    marks: list[tuple[ExpiredFile, FileSummary]] = []
    approved: list[Path] = []
    for f, summary in zip(files, summaries, strict=True):
        problem = _mismatch(recorded.get((device_id, f.day)), summary)
        if problem is not None:
            report.skipped.append((f.path, problem))
            continue
        approved.append(f.path)
        if summary.line_count:  # an empty file anchors nothing
            marks.append((f, summary))
    try:
        async with db.transaction() as cur:
            for f, summary in marks:
                values = (summary.line_count, summary.byte_count, summary.last_hash, device_id, f.day)
                await cur.execute("DELETE FROM events WHERE device_id = %s AND log_day = %s", (device_id, f.day))
                await cur.execute("DELETE FROM log_blocks WHERE device_id = %s AND log_day = %s", (device_id, f.day))
                if (device_id, f.day) in recorded:
                    await cur.execute(
                        "UPDATE log_files SET line_count = %s, byte_count = %s, last_hash = %s, pruned = 1"
                        " WHERE device_id = %s AND log_day = %s",
                        values,
                    )
                else:
                    await cur.execute(
                        "INSERT INTO log_files (line_count, byte_count, last_hash, device_id, log_day, pruned)"
                        " VALUES (%s, %s, %s, %s, %s, 1)",
                        values,
                    )
    except DatabaseError as exc:
        report.db_error = str(exc)
        report.waiting += len(approved)
        return []
    report.lines += sum(summary.line_count for _, summary in marks)
    return approved


def _summaries(files: list[ExpiredFile], checks: list[int | None]) -> list[FileSummary]:
    return [summarize(f.path, check) for f, check in zip(files, checks, strict=True)]


def _mismatch(recorded: tuple[int, str] | None, summary: FileSummary) -> str | None:
    """Why a file must not be deleted: it disagrees with the database (evidence for verify)."""
    if recorded is None:
        return None
    line_count, last_hash = recorded
    if summary.line_count < line_count:
        return f"has {summary.line_count} lines but the database recorded {line_count}; run tlink-push verify"
    if summary.hash_at != last_hash:
        return f"line {line_count} does not match the hash recorded in the database; run tlink-push verify"
    return None
