"""Background jobs on one APScheduler AsyncIOScheduler: `tlink_device_sync`, `tlink_backfill`, `sync_log_retention`.

`run_jobs(services, ...)` starts the scheduler once the services are open (the web app
enters it inside their context) and stops it, and any job in progress, before they
close. The sync first runs at start-up and retention a few minutes
after it (once recovery and projection catch-up have settled), so restarts more
frequent than an interval never starve them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Generic, TypeVar

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from projections.retention import PruneReport
from service.bootstrap import Services
from service.jobs.backfill import BackfillReport
from service.jobs.retention import RetentionStats, run_retention
from service.jobs.sync import SyncReport

log = logging.getLogger("tlink.jobs")

SYNC_JOB_ID = "tlink_device_sync"
BACKFILL_JOB_ID = "tlink_backfill"
BACKFILL_FIRST_RUN_SECONDS = 120  # after the first sync has brought the devices and sensors
RETENTION_JOB_ID = "sync_log_retention"
RETENTION_INTERVAL_SECONDS = 12 * 3600
RETENTION_FIRST_RUN_SECONDS = 300

T = TypeVar("T")


class ExclusiveJob(Generic[T]):
    """A job that never runs twice at once: scheduled runs skip while it is busy, manual runs wait."""

    def __init__(
        self,
        name: str,
        work: Callable[..., Awaitable[T]],
        on_skip: Callable[[], None] | None = None,
        may_run: Callable[[], bool] | None = None,
    ) -> None:
        """`may_run` (cluster mode): asked before each scheduled run; a run it refuses is left to another node."""
        self.name = name
        self._may_run = may_run
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
        if self._may_run is not None and not self._may_run():
            log.debug("%s left to the node that holds partition 0", self.name)
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


@dataclass(slots=True)
class Jobs:
    """The running scheduler and its jobs (`sync` None when it is not scheduled)."""

    scheduler: AsyncIOScheduler
    retention: ExclusiveJob[PruneReport]
    sync: ExclusiveJob[SyncReport] | None
    backfill: ExclusiveJob[BackfillReport] | None = None


@asynccontextmanager
async def run_jobs(services: Services, retention_stats: RetentionStats) -> AsyncIterator[Jobs]:
    """Schedule retention and (when enabled and configured) the TLINK sync; stop them, and any run
    in progress, on leaving."""
    settings, sync_stats = services.settings, services.sync.stats

    def overlap(job_id: str) -> None:
        if job_id == SYNC_JOB_ID:
            sync_stats.skipped_runs += 1

    scheduler = new_scheduler(overlap)
    work = partial(run_retention, services.db, settings.SYNC_LOG_DIR, settings.LOG_AGE, retention_stats)
    jobs = Jobs(scheduler, ExclusiveJob(RETENTION_JOB_ID, work, may_run=_leader(services)), None)
    try:
        schedule(scheduler, RETENTION_JOB_ID, jobs.retention, RETENTION_INTERVAL_SECONDS, RETENTION_FIRST_RUN_SECONDS)
        jobs.sync = _schedule_sync(services, scheduler)
        jobs.backfill = _schedule_backfill(services, scheduler)
        scheduler.start()
        yield jobs
    finally:
        for job in (jobs.retention, jobs.sync, jobs.backfill):
            if job is not None:
                await job.stop()
        if scheduler.running:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler.shutdown takes effect on the next loop turn


def _leader(services: Services) -> Callable[[], bool] | None:
    """In cluster mode, the scheduled jobs run on one node: the one that holds partition 0's lease."""
    node = services.node
    if node is None:
        return None
    return lambda: node.leads


def _schedule_sync(services: Services, scheduler: AsyncIOScheduler) -> ExclusiveJob[SyncReport] | None:
    settings, stats = services.settings, services.sync.stats
    if not settings.TLINK_SYNC_ENABLED:
        return None
    if not settings.sync_configured:
        log.warning(
            "TLINK sync is enabled but not configured (it needs TLINK_SYNC_USER_IDS, TLINK_OAUTH_USERNAME"
            " and TLINK_OAUTH_CLIENT_ID): not scheduled"
        )
        return None

    def skipped() -> None:
        stats.skipped_runs += 1

    job = ExclusiveJob(SYNC_JOB_ID, services.sync.run, on_skip=skipped, may_run=_leader(services))
    schedule(scheduler, SYNC_JOB_ID, job, settings.TLINK_SYNC_INTERVAL_SECONDS)
    stats.interval_seconds = settings.TLINK_SYNC_INTERVAL_SECONDS
    log.info(
        "TLINK sync scheduled every %d s",
        settings.TLINK_SYNC_INTERVAL_SECONDS,
        extra={"users": ",".join(map(str, settings.TLINK_SYNC_USER_IDS)), "page_size": settings.TLINK_SYNC_PAGE_SIZE},
    )
    return job


def _schedule_backfill(services: Services, scheduler: AsyncIOScheduler) -> ExclusiveJob[BackfillReport] | None:
    settings = services.settings
    if not settings.BACKFILL_ENABLED:
        return None
    if not settings.sync_configured:
        log.warning("BACKFILL_ENABLED is set but the TLINK sync is not configured: the backfill is not scheduled")
        return None
    job = ExclusiveJob(BACKFILL_JOB_ID, services.backfill.run, may_run=_leader(services))
    schedule(scheduler, BACKFILL_JOB_ID, job, settings.BACKFILL_INTERVAL_SECONDS, BACKFILL_FIRST_RUN_SECONDS)
    log.info(
        "TLINK backfill scheduled every %d s", settings.BACKFILL_INTERVAL_SECONDS,
        extra={"lookback_days": settings.BACKFILL_LOOKBACK_DAYS,
               "calls_per_sensor_per_day": settings.BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY},
    )  # fmt: skip
    return job
