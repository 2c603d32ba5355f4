"""Rebuilding the read models into new tables from the log, then switching over atomically.

The service keeps answering from the old tables meanwhile. Projection is idempotent,
so after the switch a last pass re-reads whatever the log gained since the first
passes: an event the live service applied to the old tables in between is applied to
the new ones too, and nothing is lost or counted twice. Retention runs it after it
deletes files, so the read models stay what a replay of the remaining files gives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.files import LogFiles
from projections.changes import Changes
from projections.db import Database
from projections.log_lines import DeviceStop
from projections.projector import Projector
from projections.recorder import Position
from projections.schema import READ_MODEL_TABLES, apply_schema, renamed_statements
from projections.sql_recorder import SqlRecorder, Statements, read_model_rows

NEW, OLD = "__new", "__old"
Progress = Callable[[int], None]


@dataclass(slots=True)
class RebuildReport:
    """How many events each pass applied, and the devices whose projection stopped."""

    first_pass: int = 0
    catch_up: int = 0
    after_switch: int = 0
    stopped: list[DeviceStop] = field(default_factory=list)


class ReadModelRecorder(SqlRecorder):
    """Writes only the read models, into the tables its statements name; remembers in memory
    how far each device's log has been applied (the log tables belong to the live service)."""

    def __init__(self, db: Database, suffix: str) -> None:
        super().__init__(db)
        self.statements = Statements(db.kind, suffix)
        self._applied: dict[int, Position] = {}

    async def record(self, changes: Changes, before_commit: Awaitable[object] | None = None) -> None:
        rows = read_model_rows(changes)
        await self.db.write_batch([(getattr(self.statements, name), table_rows) for name, table_rows in rows])
        for f in changes.files.values():
            pos = self._applied.get(f.device_id)
            if pos is None or (f.day, f.byte_count) > (pos.day, pos.byte_count):
                self._applied[f.device_id] = Position(f.day, f.line_count, f.byte_count, f.last_hash)

    async def positions(self) -> dict[int, Position]:
        return dict(self._applied)


async def _drain(projector: Projector) -> int:
    """Apply everything the log holds past what the projector applied; returns the number of events."""
    before = projector.stats.applied_events
    await projector.apply_log()
    return projector.stats.applied_events - before


async def _switch(db: Database) -> None:
    if db.kind == "mysql":
        pairs = [f"{t} TO {t}{OLD}, {t}{NEW} TO {t}" for t in READ_MODEL_TABLES]
        async with db.transaction() as cur:
            await cur.execute("RENAME TABLE " + ", ".join(pairs))
        return
    async with db.transaction() as cur:
        for table in READ_MODEL_TABLES:
            await cur.execute(f"ALTER TABLE {table} RENAME TO {table}{OLD}")
            await cur.execute(f"ALTER TABLE {table}{NEW} RENAME TO {table}")


async def _drop(db: Database, suffix: str) -> None:
    async with db.transaction() as cur:
        for table in READ_MODEL_TABLES:
            await cur.execute(f"DROP TABLE IF EXISTS {table}{suffix}")


async def _tidy_sqlite_indexes(db: Database) -> None:
    """SQLite keeps index names across a rename: give the live tables their usual index names."""
    await apply_schema(db)
    rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE %s", (f"%{NEW}",))
    async with db.transaction() as cur:
        for (name,) in rows:
            await cur.execute(f"DROP INDEX IF EXISTS {name}")


async def rebuild(db: Database, root: Path, progress: Progress | None = None) -> RebuildReport:
    """Build users, devices, sensors and sensor_readings anew from the log and switch to them.

    The same projector as the live service's applies the log, so a device whose line
    cannot be applied stops at the same line here (listed in the report)."""
    report = RebuildReport()
    await apply_schema(db)
    await _drop(db, NEW)
    await _drop(db, OLD)
    if db.kind == "sqlite":
        await _tidy_sqlite_indexes(db)
    async with db.transaction() as cur:
        for statement in renamed_statements(db.kind, READ_MODEL_TABLES, NEW):
            await cur.execute(statement)
    recorder = ReadModelRecorder(db, NEW)

    def observe(events: int, seconds: float) -> None:
        if progress is not None:
            progress(projector.stats.applied_events)

    projector = Projector(recorder, root, LogFiles(root), batch_limit=5000, on_batch=observe)
    report.first_pass = await _drain(projector)
    report.catch_up = await _drain(projector)
    await _switch(db)
    recorder.statements = Statements(db.kind)
    report.after_switch = await _drain(projector)
    await _drop(db, OLD)
    if db.kind == "sqlite":
        await _tidy_sqlite_indexes(db)
    report.stopped = sorted(projector.stopped.values(), key=lambda stop: stop.device_id)
    return report
