"""Background jobs on one APScheduler AsyncIOScheduler: `tlink_device_sync` and `sync_log_retention`.

`setup(app)` puts the stats objects on the app and appends `jobs_ctx`, which starts
the scheduler after the storage is up and stops it (and any job in progress) before
the storage goes down. The sync first runs at start-up and retention a few minutes
after it (once recovery and projection catch-up have settled), so restarts more
frequent than an interval never starve them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Generic, TypeVar

import aiohttp
from aiohttp import web
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from eventlog.events import utc_now
from projections.retention import PruneReport, prune_logs
from service.http.keys import DATABASE, INGESTOR, SETTINGS
from service.jobs.sync import SyncReport, SyncStats, build_sync

log = logging.getLogger("tlink.jobs")

SYNC_JOB_ID = "tlink_device_sync"
RETENTION_JOB_ID = "sync_log_retention"
RETENTION_INTERVAL_SECONDS = 12 * 3600
RETENTION_FIRST_RUN_SECONDS = 300

T = TypeVar("T")


class ExclusiveJob(Generic[T]):
    """A job that never runs twice at once: scheduled runs skip while it is busy, manual runs wait."""

    def __init__(self, name: str, work: Callable[..., Awaitable[T]], on_skip: Callable[[], None] | None = None) -> None:
        self.name = name
        self._work = work
        self._on_skip = on_skip
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._stopping = False

    @property
    def busy(self) -> bool:
        """A run is in progress."""
        return self._lock.locked()

    async def run(self, *args: Any) -> T:
        """Run now, after any run in progress; errors reach the caller."""
        async with self._lock:
            return await self._work(*args)

    async def scheduled(self) -> None:
        """The scheduler's entry: skipped while busy; an error is logged, never raised."""
        if self._stopping:
            return
        if self.busy:
            log.warning("%s skipped: the previous run is still going", self.name)
            if self._on_skip is not None:
                self._on_skip()
            return
        async with self._lock:
            self._task = asyncio.current_task()
            try:
                await self._work()
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                log.warning("%s interrupted by shutdown", self.name)
            except Exception:
                log.exception("%s failed", self.name)
            finally:
                self._task = None

    async def stop(self) -> None:
        """No more scheduled runs; cancel a scheduled run in progress and wait for it."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        async with self._lock:
            pass


# ---------------------------------------------------------------- retention


@dataclass(slots=True)
class RetentionStats:
    """Counters of the retention job since start-up."""

    runs: int = 0
    failed_runs: int = 0
    files_deleted: int = 0
    folders_removed: int = 0
    files_kept: int = 0  # due but kept (mismatch, undeletable, database unreachable)
    last_finished_at: datetime | None = None


async def run_retention(app: web.Application) -> PruneReport:
    """One retention pass of the service, logged and counted."""
    settings, stats = app[SETTINGS], app[RETENTION_STATS]
    try:
        report = await prune_logs(app[DATABASE], settings.SYNC_LOG_DIR, settings.LOG_AGE)
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


# ---------------------------------------------------------------- app


SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
SYNC_STATS = web.AppKey("sync_stats", SyncStats)
RETENTION_STATS = web.AppKey("retention_stats", RetentionStats)
SYNC_JOB: web.AppKey[ExclusiveJob[SyncReport]] = web.AppKey("sync_job")
RETENTION_JOB: web.AppKey[ExclusiveJob[PruneReport]] = web.AppKey("retention_job")


def setup(app: web.Application) -> None:
    """Stats on the app (readable from creation on) and the jobs' cleanup context, after storage_ctx."""
    app[SYNC_STATS] = SyncStats()
    app[RETENTION_STATS] = RetentionStats()
    app.cleanup_ctx.append(jobs_ctx)


def schedule(
    scheduler: AsyncIOScheduler, job_id: str, job: ExclusiveJob[Any], seconds: float, first_in: float = 0.0
) -> None:
    """Every `seconds`, first in `first_in` seconds; never two at once, missed runs collapse into one."""
    scheduler.add_job(
        job.scheduled,
        "interval",
        seconds=seconds,
        id=job_id,
        name=job_id,
        next_run_time=datetime.now(UTC) + timedelta(seconds=first_in),
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(seconds)),
    )


def new_scheduler(on_overlap: Callable[[str], None] | None = None) -> AsyncIOScheduler:
    """An AsyncIOScheduler in UTC; `on_overlap(job id)` hears of runs dropped by max_instances."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    if on_overlap is not None:

        def listener(event: JobEvent) -> None:
            on_overlap(event.job_id)

        scheduler.add_listener(listener, EVENT_JOB_MAX_INSTANCES)
    return scheduler


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """The scheduler and its jobs, for the app's lifetime (needs storage_ctx before it)."""
    sync_stats = app[SYNC_STATS]

    def overlap(job_id: str) -> None:
        if job_id == SYNC_JOB_ID:
            sync_stats.skipped_runs += 1

    scheduler = new_scheduler(overlap)
    jobs: list[ExclusiveJob[Any]] = []
    session: aiohttp.ClientSession | None = None
    try:
        retention = ExclusiveJob(RETENTION_JOB_ID, partial(run_retention, app))
        schedule(scheduler, RETENTION_JOB_ID, retention, RETENTION_INTERVAL_SECONDS, RETENTION_FIRST_RUN_SECONDS)
        app[RETENTION_JOB] = retention
        jobs.append(retention)
        session = _start_sync(app, scheduler, jobs)
        scheduler.start()
        app[SCHEDULER] = scheduler
        yield
    finally:
        for job in jobs:
            await job.stop()
        if scheduler.running:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler.shutdown takes effect on the next loop turn
        if session is not None:
            await session.close()


def _start_sync(
    app: web.Application, scheduler: AsyncIOScheduler, jobs: list[ExclusiveJob[Any]]
) -> aiohttp.ClientSession | None:
    settings, stats = app[SETTINGS], app[SYNC_STATS]
    if not settings.TLINK_SYNC_ENABLED:
        return None
    if not settings.sync_configured:
        log.warning(
            "TLINK sync is enabled but not configured (it needs TLINK_SYNC_USER_IDS, TLINK_OAUTH_USERNAME"
            " and TLINK_OAUTH_CLIENT_ID): not scheduled"
        )
        return None
    session = aiohttp.ClientSession()
    sync = build_sync(settings, session, app[INGESTOR], app[DATABASE], stats)

    def skipped() -> None:
        stats.skipped_runs += 1

    job = ExclusiveJob(SYNC_JOB_ID, sync.run, on_skip=skipped)
    schedule(scheduler, SYNC_JOB_ID, job, settings.TLINK_SYNC_INTERVAL_SECONDS)
    app[SYNC_JOB] = job
    jobs.append(job)
    log.info(
        "TLINK sync scheduled every %d s",
        settings.TLINK_SYNC_INTERVAL_SECONDS,
        extra={"users": ",".join(map(str, settings.TLINK_SYNC_USER_IDS)), "page_size": settings.TLINK_SYNC_PAGE_SIZE},
    )
    return session
