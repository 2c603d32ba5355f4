"""The DDL of every table, per backend, and the names of the read-model tables."""

from __future__ import annotations

import re
from pathlib import Path

import sql as sql_package
from eventlog.db import Database, split_statements

READ_MODEL_TABLES = ("users", "devices", "sensors", "sensor_readings")
LOG_TABLES = ("events", "log_files", "log_blocks")
ALL_TABLES = LOG_TABLES + READ_MODEL_TABLES

_SQL_DIR = Path(sql_package.__file__).parent
_TABLE_RE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")
_INDEX_RE = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+) ON (\w+)")


def schema_script(kind: str) -> str:
    """sql/schema.sql for MySQL/MariaDB, sql/schema.sqlite.sql for SQLite."""
    name = "schema.sql" if kind == "mysql" else "schema.sqlite.sql"
    return (_SQL_DIR / name).read_text(encoding="utf-8")


async def apply_schema(db: Database) -> None:
    """Create missing tables and indexes (every statement is idempotent)."""
    await db.execute_script(schema_script(db.kind))


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
