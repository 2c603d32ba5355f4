"""The DDL of every table, per backend, and the names of the read-model tables."""

from __future__ import annotations

import re
from pathlib import Path

import sql as sql_package
from projections.db import Database, DatabaseError, DatabaseUnavailable, split_statements
from projections.errors import ProjectionError

READ_MODEL_TABLES = ("users", "devices", "sensors", "sensor_readings")
LOG_TABLES = ("events", "log_files", "log_blocks")
ALL_TABLES = ("schema_info", *LOG_TABLES, *READ_MODEL_TABLES)
# Version 2: sensors keyed by (device_id, sensor_id), readings by (device_id, sensor_id,
# recorded_at); owner and parentUserId decided by event id; wider integer columns.
SCHEMA_VERSION = 2


class SchemaOutdated(ProjectionError):
    """The database holds tables of another schema version; replay (or a service start) rebuilds them."""

_SQL_DIR = Path(sql_package.__file__).parent
_TABLE_RE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")
_INDEX_RE = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+) ON (\w+)")


def schema_script(kind: str) -> str:
    """sql/schema.sql for MySQL/MariaDB, sql/schema.sqlite.sql for SQLite."""
    name = "schema.sql" if kind == "mysql" else "schema.sqlite.sql"
    return (_SQL_DIR / name).read_text(encoding="utf-8")


async def stored_version(db: Database) -> int | None:
    """The schema version of the database's tables: None when it has none of them (or they are
    empty, as a container's first boot leaves them), 1 for tables made before versions were kept."""
    try:
        rows = await db.fetchall("SELECT version FROM schema_info WHERE name = 'tables'")
    except DatabaseUnavailable:
        raise
    except DatabaseError:
        rows = []
    if rows:
        return int(rows[0][0])
    try:
        used = await db.fetchall("SELECT 1 FROM log_files UNION ALL SELECT 1 FROM events LIMIT 1")
    except DatabaseUnavailable:
        raise
    except DatabaseError:
        return None
    return 1 if used else None


async def schema_outdated(db: Database) -> bool:
    """Does the database hold tables of another schema version?"""
    version = await stored_version(db)
    return version is not None and version != SCHEMA_VERSION


async def apply_schema(db: Database) -> None:
    """Create missing tables and indexes (every statement is idempotent); SchemaOutdated if the
    database's tables are of another version."""
    version = await stored_version(db)
    if version is not None and version != SCHEMA_VERSION:
        raise SchemaOutdated(
            f"the database holds tables of schema version {version}, this version needs {SCHEMA_VERSION}:"
            " run `tlink-push replay` (or start the service with AUTO_APPLY_SCHEMA=true) to rebuild them from the log"
        )
    await create_tables(db)


async def create_tables(db: Database) -> None:
    """Create missing tables and indexes, and record the schema version."""
    await db.execute_script(schema_script(db.kind))
    # One upsert, not a delete and an insert: nodes of a cluster starting together on a new database would
    # deadlock on the two statements' locks (MySQL error 1213).
    upsert = ("ON DUPLICATE KEY UPDATE version = VALUES(version)" if db.kind == "mysql"
              else "ON CONFLICT (name) DO UPDATE SET version = excluded.version")  # fmt: skip
    async with db.transaction() as cur:
        await cur.execute(f"INSERT INTO schema_info (name, version) VALUES ('tables', %s) {upsert}", [SCHEMA_VERSION])


async def drop_all(db: Database) -> None:
    """Drop every table of the service."""
    async with db.transaction() as cur:
        for table in ALL_TABLES:
            await cur.execute(f"DROP TABLE IF EXISTS {table}")


def renamed_statements(kind: str, tables: tuple[str, ...], suffix: str) -> list[str]:
    """The DDL of some tables, creating them under `<name><suffix>` (for rebuild)."""
    result = []
    for statement in split_statements(schema_script(kind)):
        table = _TABLE_RE.search(statement) or None
        index = _INDEX_RE.search(statement)
        if table and table.group(1) in tables:
            result.append(_TABLE_RE.sub(f"CREATE TABLE {table.group(1)}{suffix}", statement, count=1))
        elif index and index.group(2) in tables:
            name, owner = index.group(1), index.group(2)
            result.append(_INDEX_RE.sub(f"CREATE INDEX {name}{suffix} ON {owner}{suffix}", statement, count=1))
    return result
