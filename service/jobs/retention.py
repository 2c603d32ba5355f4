"""The retention job: the service's scheduled prune of daily files older than LOG_AGE days, logged and counted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from eventlog.events import utc_now
from projections.db import Database
from projections.retention import PruneReport, prune_logs

log = logging.getLogger("tlink.jobs")


@dataclass(slots=True)
class RetentionStats:
    """Counters of the retention job since start-up."""

    runs: int = 0
    failed_runs: int = 0
    files_deleted: int = 0
    folders_removed: int = 0
    files_kept: int = 0  # due but kept (mismatch, undeletable, database unreachable)
    last_finished_at: datetime | None = None


async def run_retention(db: Database, root: Path, age: int, stats: RetentionStats) -> PruneReport:
    """One retention pass of the service (files of days before today minus `age`), logged and counted."""
    try:
        report = await prune_logs(db, root, age)
    except Exception:
        stats.failed_runs += 1
        raise
    stats.runs += 1
    stats.files_deleted += len(report.deleted)
    stats.folders_removed += len(report.folders)
    stats.files_kept += report.kept
    stats.last_finished_at = utc_now()
    log_prune(report)
    return report


def log_prune(report: PruneReport) -> None:
    """The log lines of a retention pass."""
    for path, reason in report.skipped:
        log.warning("log file due for retention kept: %s", reason, extra={"file": str(path)})
    if report.db_error is not None:
        log.warning("log retention: %d due files kept until the database answers: %s", report.waiting, report.db_error)
    log.info(
        "log retention completed deleted=%d folders=%d lines=%d kept=%d cutoff=%s",
        len(report.deleted), len(report.folders), report.lines, report.kept, report.cutoff,
    )  # fmt: skip
