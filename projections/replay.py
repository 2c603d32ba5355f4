"""Replay: rebuild the events table and every read model from the log files alone."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from eventlog.events import EventLogError
from eventlog.files import LogFiles
from eventlog.recovery import Repair, repair_all
from eventlog.store import lock_root
from eventlog.verify import RecordedFile
from projections.db import Database, DatabaseUrl, connect
from projections.log_lines import DeviceStop
from projections.projector import Projector
from projections.schema import SCHEMA_VERSION, apply_schema, stored_version
from projections.sql_recorder import SqlRecorder

Counter = Callable[[int], None]


@dataclass(slots=True)
class ReplayReport:
    """What a replay applied, and the devices whose projection stopped at a line it could not apply."""

    events: int = 0
    stopped: list[DeviceStop] = field(default_factory=list)
    repairs: list[Repair] = field(default_factory=list)  # torn tails cut and foreign files moved aside first


async def replay_logs(
    db: Database, root: Path, progress: Counter | None = None, url: str | DatabaseUrl | None = None, workers: int = 1
) -> ReplayReport:
    """Drop every table, recreate them, and apply the whole log.

    A device whose next line cannot be applied stops there, the same line whatever the
    worker count, and is listed in the report; every other device is applied in full.

    `progress(total)` hears the running count of events applied.

    With `workers` > 1 (and the database `url`, text or parsed), that many processes each apply the
    logs of a share of the devices: a device's events stay in order within one process,
    and the processes' Python work runs on separate cores.
    """
    lock = lock_root(root)  # the service must be stopped: replay drops what it writes to
    try:
        repairs = repair_all(root)
        await SqlRecorder(db).reset()
        report = await _apply(db, root, progress, url, workers)
        report.repairs = repairs
        return report
    finally:
        os.close(lock)


async def _apply(
    db: Database, root: Path, progress: Counter | None, url: str | DatabaseUrl | None, workers: int
) -> ReplayReport:
    if workers > 1 and url is not None:
        return await asyncio.get_running_loop().run_in_executor(None, _apply_in_processes, url, root, workers, progress)
    total = 0

    def add(events: int) -> None:
        nonlocal total
        total += events
        if progress is not None:
            progress(total)

    return await apply_log_share(db, root, 0, 1, add)


async def apply_log_share(db: Database, root: Path, share: int, shares: int, on_batch: Counter) -> ReplayReport:
    """Apply the logs of the devices whose id modulo `shares` is `share`; `on_batch(events)` after each batch."""
    def observe(events: int, seconds: float) -> None:
        on_batch(events)

    share_files = _ShareOfFiles(root, share, shares)
    projector = Projector(SqlRecorder(db), root, share_files, batch_limit=5000, on_batch=observe)
    await projector.apply_log()
    stopped = sorted(projector.stopped.values(), key=lambda stop: stop.device_id)
    return ReplayReport(projector.stats.applied_events, stopped)


class _ShareOfFiles(LogFiles):
    """The log files of the devices whose id modulo `shares` is `share`."""

    def __init__(self, root: Path, share: int, shares: int) -> None:
        super().__init__(root)
        self.share, self.shares = share, shares

    def devices(self) -> list[int]:
        """This share's devices."""
        return [d for d in super().devices() if d % self.shares == self.share]


def _apply_in_processes(url: str | DatabaseUrl, root: Path, workers: int, progress: Counter | None) -> ReplayReport:
    context = multiprocessing.get_context("spawn")
    applied = context.Value("q", 0)
    stops_dir = Path(tempfile.mkdtemp(prefix="tlink-replay-"))
    processes = [
        context.Process(target=_apply_share_process, args=(url, str(root), share, workers, applied, str(stops_dir)))
        for share in range(workers)
    ]
    for process in processes:
        process.start()
    while any(p.is_alive() for p in processes):
        time.sleep(0.2)
        if progress is not None:
            progress(int(applied.value))
    if progress is not None:
        progress(int(applied.value))
    try:
        failed = [p.exitcode for p in processes if p.exitcode != 0]
        if failed:
            raise EventLogError(f"a replay worker failed (exit status {failed[0]}); see its error above")
        stopped = [DeviceStop(**doc) for path in sorted(stops_dir.iterdir()) for doc in orjson.loads(path.read_bytes())]
    finally:
        shutil.rmtree(stops_dir, ignore_errors=True)
    return ReplayReport(int(applied.value), sorted(stopped, key=lambda stop: stop.device_id))


def _apply_share_process(
    url: str | DatabaseUrl, root: str, share: int, shares: int, applied: Any, stops_dir: str
) -> None:
    def count(events: int) -> None:
        with applied.get_lock():
            applied.value += events

    async def run() -> None:
        db = await connect(url)
        try:
            report = await apply_log_share(db, Path(root), share, shares, count)
        finally:
            await db.close()
        stops = [dataclasses.asdict(stop) for stop in report.stopped]
        (Path(stops_dir) / f"share-{share}.json").write_bytes(orjson.dumps(stops))

    asyncio.run(run())


async def recorded_files(db: Database) -> dict[tuple[int, str], RecordedFile] | None:
    """Each file's applied line count and last-line hash as the database has them; None when it
    holds none of our tables. Read-only: creates nothing (SchemaOutdated for tables of another version)."""
    version = await stored_version(db)
    if version is None:
        return None
    if version != SCHEMA_VERSION:
        await apply_schema(db)  # raises SchemaOutdated before it would create anything
    rows = await db.fetchall("SELECT device_id, log_day, line_count, last_hash, pruned FROM log_files")
    return {(int(r[0]), str(r[1])): RecordedFile(int(r[2]), str(r[3]), bool(r[4])) for r in rows}
