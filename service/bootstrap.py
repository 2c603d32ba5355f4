"""The composition root: every long-lived object of the service is built here, from the settings.

`open_services` builds the whole write side and opens it as one async context: the
database pool, the log store (taking the log root's writer lock and repairing torn
tails), the recorder, the projector, the ingestor, the dead-letter folder, and the TLINK
client and sync on their own HTTP session. The web app (`service.http.app`), `tlink-push
sync` and the tests use it; a test may hand it another recorder (the in-memory one).

`open_database` opens the database alone, for the commands that work on the log files
and the database directly while the service is stopped or alongside it (replay, rebuild,
prune, verify): they must not take the writer lock a running service holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from eventlog.deadletter import DeadLetters
from eventlog.recovery import Repair
from eventlog.store import FlushObserver, LogStore
from projections.db import Database, connect
from projections.projector import Projector
from projections.recorder import Recorder
from projections.sql_recorder import SqlRecorder
from service.config import Settings
from service.ingest import Ingestor
from service.jobs.backfill import Backfill, BackfillStats, build_backfill
from service.jobs.sync import SyncStats, TlinkSync, build_client, build_sync
from service.jobs.tlink_client import TlinkClient

if TYPE_CHECKING:  # cluster mode needs the `cluster` extra (nats-py), imported only when BUS_URL is set
    from service.cluster.node import Node

log = logging.getLogger("tlink.app")


@dataclass(frozen=True, slots=True)
class Services:
    """The service's long-lived objects, open for as long as the context of `open_services` lasts."""

    settings: Settings
    db: Database
    store: LogStore
    recorder: Recorder
    projector: Projector
    ingestor: Ingestor
    dead_letters: DeadLetters
    tlink: TlinkClient
    sync: TlinkSync  # runs only when the settings configure it (Settings.sync_problem)
    backfill: Backfill  # the same; it and the sync hold one lock while they run
    node: Node | None = None  # cluster mode (BUS_URL): this node on the bus


@asynccontextmanager
async def open_database(settings: Settings, *, create: bool = True) -> AsyncIterator[Database]:
    """The database of DATABASE_URL (with `create`, made if missing), closed afterwards."""
    db = await connect(settings.database, create=create, maxsize=settings.DB_POOL_SIZE)
    try:
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    recorder: Recorder | None = None,
    on_flush: FlushObserver | None = None,
    sync_stats: SyncStats | None = None,
    backfill_stats: BackfillStats | None = None,
) -> AsyncIterator[Services]:
    """Build and open everything; on leaving, in-flight appends finish, then the projector and the database stop.

    `recorder`: where projected rows go (default: the SQL recorder on the database).
    `on_flush` hears of every group commit, `sync_stats` and `backfill_stats` count the jobs' runs (for metrics).
    """
    async with open_database(settings) as db, aiohttp.ClientSession() as session:
        node = await _open_node(settings) if settings.BUS_URL else None
        store = LogStore(settings.SYNC_LOG_DIR, on_flush=on_flush, fence=None if node is None else node.fence)
        projector: Projector | None = None
        try:
            for repair in await store.open():
                _log_repair(repair)
            recorder = recorder or SqlRecorder(db, auto_schema=settings.AUTO_APPLY_SCHEMA)
            projector = Projector(recorder, settings.SYNC_LOG_DIR, store, owns=None if node is None else node.owns)
            await projector.start()
            ingestor = Ingestor(
                store, projector, recorder, settings.MAX_SAMPLES_PER_PUSH, settings.MAX_SENSORS_PER_DEVICE, node
            )
            if node is not None:
                await node.start(store, projector, ingestor)
            sync_stats = sync_stats or SyncStats()
            tlink, pulling = build_client(settings, session, sync_stats), asyncio.Lock()
            yield Services(
                settings, db, store, recorder, projector, ingestor, DeadLetters(settings.SYNC_LOG_DIR), tlink,
                build_sync(settings, tlink, ingestor, db, sync_stats, pulling),
                build_backfill(settings, tlink, ingestor, db, backfill_stats or BackfillStats(), pulling), node,
            )  # fmt: skip
        finally:
            if node is not None:
                await node.stop()  # its writers stop and its leases are given back
            await store.close()  # in-flight appends finish first: they were (or will be) answered
            if projector is not None:
                await projector.stop()


async def _open_node(settings: Settings) -> Node:
    """This node on the bus of BUS_URL (the stream and buckets made if missing)."""
    from service.cluster.bus import open_bus
    from service.cluster.node import Node

    return Node(settings, await open_bus(settings))


def _log_repair(repair: Repair) -> None:
    log.warning(
        repair.message,
        extra={
            "file": str(repair.path), "quarantine": str(repair.quarantine), "bytes": repair.moved_bytes,
            "kind": repair.kind, "reason": repair.reason,
        },
    )  # fmt: skip
