"""Rebuilding the read models into new tables from the log, then switching over atomically.

The service keeps answering from the old tables meanwhile. Projection is idempotent,
so after the switch a last pass re-reads whatever the log gained since the first
passes: an event the live service applied to the old tables in between is applied to
the new ones too, and nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from eventlog.db import Database
from eventlog.files import device_days, device_ids, log_path, read_lines
from projections.changes import Placed, changes_of, placed_line
from projections.schema import READ_MODEL_TABLES, apply_schema, renamed_statements
from projections.sql_recorder import Statements, read_model_rows

NEW, OLD = "__new", "__old"
Ends = dict[tuple[int, str], tuple[int, int]]  # (device, day) -> (bytes read, lines read)
Progress = Callable[[int], None]


@dataclass(slots=True)
class RebuildReport:
    """How many events each pass applied."""

    first_pass: int = 0
    catch_up: int = 0
    after_switch: int = 0


def _new_lines(root: Path, ends: Ends) -> Iterator[Placed]:
    """Every line past what `ends` records, advancing it, in one walk over the files."""
    for device_id in device_ids(root):
        for day in device_days(root, device_id):
            start, lines = ends.get((device_id, day), (0, 0))
            path = log_path(root, device_id, day)
            if path.stat().st_size <= start:
                continue
            for line in read_lines(path, start, lines + 1, day):
                ends[(device_id, day)] = (line.end, line.line_no)
                yield placed_line(line)


async def _project(db: Database, statements: Statements, placed: list[Placed]) -> None:
    rows = read_model_rows(changes_of(placed))
    await db.write_batch([(getattr(statements, name), table_rows) for name, table_rows in rows])


async def _drain(db: Database, statements: Statements, root: Path, ends: Ends, progress: Progress | None) -> int:
    """Project everything the log holds past `ends`; returns the number of events."""
    total = 0
    loop = asyncio.get_running_loop()
    while True:  # walks again until one finds nothing: lines keep arriving while it runs
        walk, before = _new_lines(root, ends), total
        while placed := await loop.run_in_executor(None, list, islice(walk, 5000)):
            await _project(db, statements, placed)
            total += len(placed)
            if progress is not None:
                progress(total)
        if total == before:
            return total


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
    """Build users, devices, sensors and sensor_readings anew from the log and switch to them."""
    report = RebuildReport()
    await apply_schema(db)
    await _drop(db, NEW)
    await _drop(db, OLD)
    if db.kind == "sqlite":
        await _tidy_sqlite_indexes(db)
    async with db.transaction() as cur:
        for statement in renamed_statements(db.kind, READ_MODEL_TABLES, NEW):
            await cur.execute(statement)
    ends: Ends = {}
    renamed = Statements(db.kind, NEW)
    report.first_pass = await _drain(db, renamed, root, ends, progress)
    report.catch_up = await _drain(db, renamed, root, ends, progress)
    await _switch(db)
    report.after_switch = await _drain(db, Statements(db.kind), root, ends, progress)
    await _drop(db, OLD)
    if db.kind == "sqlite":
        await _tidy_sqlite_indexes(db)
    return report
