"""The recorder on a SQL database (SQLite or MySQL/MariaDB): one transaction a batch."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from projections.changes import Changes, event_row_body, user_uuid
from projections.db import Database, placeholders
from projections.mysql_text import mysql_literals
from projections.recorder import Position, Recorder
from projections.schema import create_tables, drop_all, schema_outdated, schema_script
from projections.views import platform_time

log = logging.getLogger("tlink.projector")

_NEW = re.compile(r"\bnew\.(\w+)")
_OLD = re.compile(r"\bold\.(\w+)")


def newer(column: str, strict: bool = False) -> str:
    """Condition: the incoming row's `column` is set and later than the stored one."""
    op = ">" if strict else ">="
    return f"(new.{column} IS NOT NULL AND (old.{column} IS NULL OR new.{column} {op} old.{column}))"


def when(condition: str, columns: Sequence[str]) -> dict[str, str]:
    """SET clauses taking each column from the incoming row when `condition` holds."""
    return {c: f"CASE WHEN {condition} THEN new.{c} ELSE old.{c} END" for c in columns}


def least(column: str, pick: str = "<") -> str:
    """The smaller (or with '>' the larger) of stored and incoming, ignoring NULLs."""
    return (
        f"CASE WHEN old.{column} IS NULL THEN new.{column} WHEN new.{column} IS NULL THEN old.{column} "
        f"WHEN new.{column} {pick} old.{column} THEN new.{column} ELSE old.{column} END"
    )


def upsert(kind: str, table: str, columns: Sequence[str], key: Sequence[str], sets: dict[str, str]) -> str:
    """INSERT ... ON CONFLICT/ON DUPLICATE KEY UPDATE for either backend.

    `sets` are written with `new.col` and `old.col`. MySQL evaluates SET clauses left to
    right, later ones seeing earlier results, so the column a condition tests comes last.
    """
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders(len(columns))})"
    if kind == "mysql":
        new, old = r"VALUES(\1)", r"\1"
    else:
        new, old = r"excluded.\1", table + r".\1"
    body = ", ".join(c + " = " + _OLD.sub(old, _NEW.sub(new, e)) for c, e in sets.items())
    if kind == "mysql":
        return f"{head} ON DUPLICATE KEY UPDATE {body}"
    return f"{head} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {body}"


def insert_ignore(kind: str, table: str, columns: Sequence[str]) -> str:
    """INSERT that skips rows whose key is already there.

    MySQL's INSERT IGNORE would raise a warning per skipped row (and a SHOW WARNINGS
    round trip); a no-op update of the first column skips them silently.
    """
    values = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders(len(columns))})"
    if kind == "mysql":
        return f"{values} ON DUPLICATE KEY UPDATE {columns[0]} = {columns[0]}"
    return values.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)


EVENT_COLUMNS = (
    "event_id", "type", "device_id", "user_id", "received_at", "log_day",
    "line_no", "byte_offset", "body_hash", "line_hash", "body",
)  # fmt: skip
USER_COLUMNS = ("id", "tlink_user_id", "parent_user_id", "parent_event_id", "updated_at")
OWNER_COLUMNS = ("user_id", "tlink_user_id", "owner_event_id")  # of the device's greatest event id
PUSH_COLUMNS = (
    "device_id", *OWNER_COLUMNS, "parent_user_id", "last_flag", "last_push_time", "last_event_at",
)  # fmt: skip
META_COLUMNS = (
    "device_id", *OWNER_COLUMNS, "device_name", "device_no", "group_id", "lat", "lng", "is_line", "meta_updated_at",
)  # fmt: skip
LATEST_COLUMNS = (
    "sensor_id", "device_id", "sensor_type_id", "unit", "latest_value", "latest_raw_value",
    "latest_sensor_timestamp", "is_alarm", "is_line", "latest_recorded_at",
)  # fmt: skip
SENSOR_META_COLUMNS = ("sensor_id", "device_id", "sensor_name", "sensor_type_id", "unit", "ordernum", "meta_updated_at")
READING_COLUMNS = (
    "sensor_id", "recorded_at", "device_id", "sensor_timestamp", "value",
    "raw_value", "is_alarm", "is_line", "event_id",
)  # fmt: skip
BLOCK_COLUMNS = (
    "device_id", "log_day", "block_no", "start_offset", "end_offset",
    "first_line", "min_recorded_at", "max_recorded_at",
)  # fmt: skip
FILE_COLUMNS = ("device_id", "log_day", "line_count", "byte_count", "last_hash")


class Statements:
    """The write statements of one backend, with read-model table names that can be renamed."""

    def __init__(self, kind: str, suffix: str = "") -> None:
        def t(name: str) -> str:
            return name + suffix

        self.events = insert_ignore(kind, "events", EVENT_COLUMNS)
        # Facts several devices touch are decided by the greatest event id, whatever the order.
        user_sets = {
            **when(newer("parent_event_id", strict=True), ["parent_user_id", "parent_event_id"]),
            "updated_at": least("updated_at", ">"),
        }
        self.users = upsert(kind, t("users"), USER_COLUMNS, ["tlink_user_id"], user_sets)
        owner_sets = when(newer("owner_event_id", strict=True), OWNER_COLUMNS)
        push_sets = {
            **owner_sets,
            "last_push_time": least("last_push_time", ">"),
            **when(newer("last_event_at"), ["parent_user_id", "last_flag", "last_event_at"]),
        }
        self.device_push = upsert(kind, t("devices"), PUSH_COLUMNS, ["device_id"], push_sets)
        meta_sets = {**owner_sets, **when(newer("meta_updated_at"), META_COLUMNS[len(OWNER_COLUMNS) + 1 :])}
        self.device_meta = upsert(kind, t("devices"), META_COLUMNS, ["device_id"], meta_sets)
        # Type and unit: the newest sync's when it gives them, else the first push's.
        latest_sets = {
            "sensor_type_id": "COALESCE(old.sensor_type_id, new.sensor_type_id)",
            "unit": "COALESCE(old.unit, new.unit)",
            **when(newer("latest_recorded_at", strict=True), LATEST_COLUMNS[4:]),
        }
        sensor_key = ["device_id", "sensor_id"]
        self.sensor_latest = upsert(kind, t("sensors"), LATEST_COLUMNS, sensor_key, latest_sets)
        meta_newer = newer("meta_updated_at")
        sensor_meta_sets = {
            **{c: f"CASE WHEN {meta_newer} THEN COALESCE(new.{c}, old.{c}) ELSE old.{c} END"
               for c in ("sensor_type_id", "unit")},
            **when(meta_newer, ["sensor_name", "ordernum", "meta_updated_at"]),
        }  # fmt: skip
        self.sensor_meta = upsert(kind, t("sensors"), SENSOR_META_COLUMNS, sensor_key, sensor_meta_sets)
        self.readings = insert_ignore(kind, t("sensor_readings"), READING_COLUMNS)
        block_sets = {
            "start_offset": least("start_offset"),
            "end_offset": least("end_offset", ">"),
            "first_line": least("first_line"),
            "min_recorded_at": least("min_recorded_at"),
            "max_recorded_at": least("max_recorded_at", ">"),
        }
        self.blocks = upsert(kind, "log_blocks", BLOCK_COLUMNS, ["device_id", "log_day", "block_no"], block_sets)
        self.files = upsert(
            kind, "log_files", FILE_COLUMNS, ["device_id", "log_day"],
            when("new.byte_count >= old.byte_count", ["line_count", "last_hash", "byte_count"]),
        )  # fmt: skip


def _flag_int(value: bool | None) -> int | None:
    return None if value is None else int(value)


Rows = list[tuple[Any, ...]]

# Each table's rows of a batch, by the name of its statement in `Statements`.
ROW_BUILDERS: dict[str, Callable[[Changes], Rows]] = {
    "events": lambda changes: [
        (p.event.id, p.event.type, p.event.device_id, p.event.user_id, p.event.received_at, p.day, p.line_no,
         p.offset, changes.digests.get(p.event.id), p.hash, event_row_body(p.event))
        for p in changes.events
    ],
    "blocks": lambda changes: [
        (b.device_id, b.day, b.block_no, b.start_offset, b.end_offset, b.first_line, b.min_recorded_at,
         b.max_recorded_at) for b in changes.blocks.values()
    ],
    "files": lambda changes: [
        (f.device_id, f.day, f.line_count, f.byte_count, f.last_hash) for f in changes.files.values()
    ],
    "device_meta": lambda changes: [
        (m.device_id, user_uuid(m.tlink_user_id), m.tlink_user_id, m.event_id, m.device_name, m.device_no,
         m.group_id, m.lat, m.lng, _flag_int(m.is_line), m.meta_updated_at) for m in changes.device_meta.values()
    ],
    "device_push": lambda changes: [
        (p.device_id, user_uuid(p.tlink_user_id), p.tlink_user_id, p.event_id, p.parent_user_id,
         p.last_flag, p.last_push_time, p.last_event_at) for p in changes.device_pushes.values()
    ],
    "sensor_meta": lambda changes: [
        (s.sensor_id, s.device_id, s.sensor_name, s.sensor_type_id, s.unit, s.ordernum,
         s.meta_updated_at) for s in changes.sensor_meta.values()
    ],
    "sensor_latest": lambda changes: [
        (s.sensor_id, s.device_id, s.sensor_type_id, s.unit, s.reading.value, s.reading.raw_value,
         s.reading.sensor_timestamp, _flag_int(s.reading.is_alarm), _flag_int(s.reading.is_line),
         s.reading.recorded_at) for s in changes.sensor_latest.values()
    ],
    "readings": lambda changes: [
        (r.sensor_id, r.recorded_at, device_id, r.sensor_timestamp, r.value, r.raw_value,
         _flag_int(r.is_alarm), _flag_int(r.is_line), event_id) for device_id, r, event_id in changes.readings.values()
    ],
    "users": lambda changes: [
        (user_uuid(u.tlink_user_id), u.tlink_user_id, u.parent_user_id, u.parent_event_id, u.updated_at)
        for u in changes.users.values()
    ],
}  # fmt: skip
LOG_TABLES = ("events", "blocks", "files")
# Users last: every batch of a user's devices touches that one row, so its lock is held briefly.
READ_MODEL_TABLES = ("device_meta", "device_push", "sensor_meta", "sensor_latest", "readings", "users")


def read_model_rows(changes: Changes) -> list[tuple[str, Rows]]:
    """(statement attribute, rows) pairs for the read-model tables, in write order."""
    return [(name, ROW_BUILDERS[name](changes)) for name in READ_MODEL_TABLES]


def log_rows(changes: Changes) -> list[tuple[str, Rows]]:
    """(statement attribute, rows) pairs for the events table and the log's side tables."""
    return [(name, ROW_BUILDERS[name](changes)) for name in LOG_TABLES]


class SqlRecorder(Recorder):
    """Writes batches with one multi-row statement per table, all in one transaction."""

    def __init__(self, db: Database, auto_schema: bool = False) -> None:
        self.db = db
        self.statements = Statements(db.kind)
        self._auto_schema = auto_schema

    async def record(self, changes: Changes, before_commit: Awaitable[object] | None = None) -> None:
        written: dict[str, Sequence[Any]] = {}
        if self.db.kind == "mysql":
            written.update(mysql_literals(changes))
        statements = [
            (getattr(self.statements, name), written[name] if name in written else ROW_BUILDERS[name](changes))
            for name in (*LOG_TABLES, *READ_MODEL_TABLES)
        ]
        await self.db.write_batch(statements, before_commit)

    async def positions(self) -> dict[int, Position]:
        if self._auto_schema:  # first contact with the database: make sure the tables exist
            if await schema_outdated(self.db):
                log.warning("the database holds tables of an older schema: rebuilding them from the log files")
                await self.reset()
            else:
                await create_tables(self.db)  # the version was just read: apply_schema would read it again
            self._auto_schema = False
        rows = await self.db.fetchall(
            "SELECT f.device_id, f.log_day, f.line_count, f.byte_count, f.last_hash FROM log_files f"
            " JOIN (SELECT device_id, MAX(log_day) AS log_day FROM log_files GROUP BY device_id) m"
            " ON m.device_id = f.device_id AND m.log_day = f.log_day"
        )
        return {int(r[0]): Position(str(r[1]), int(r[2]), int(r[3]), str(r[4])) for r in rows}

    async def known_pushes(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], str]:
        wanted = set(keys)
        if not wanted:
            return {}
        digests = sorted({digest for _, digest in wanted})
        rows = await self.db.fetchall(
            "SELECT device_id, body_hash, event_id FROM events"
            f" WHERE body_hash IN ({placeholders(len(digests))})",
            digests,
        )
        found = {(int(r[0]), str(r[1])): str(r[2]) for r in rows}
        return {key: event_id for key, event_id in found.items() if key in wanted}

    async def push_times(self, device_ids: Iterable[int]) -> dict[int, datetime]:
        wanted = sorted(set(device_ids))
        if not wanted:
            return {}
        rows = await self.db.fetchall(
            f"SELECT device_id, last_push_time FROM devices WHERE device_id IN ({placeholders(len(wanted))})"
            " AND last_push_time IS NOT NULL",
            wanted,
        )
        return {int(r[0]): when for r in rows if (when := platform_time(r[1])) is not None}

    async def sensor_ids(self, device_id: int) -> set[int]:
        rows = await self.db.fetchall("SELECT sensor_id FROM sensors WHERE device_id = %s", (device_id,))
        return {int(r[0]) for r in rows}

    async def reset(self) -> None:
        """Drop and recreate every table, keeping the records of pruned files.

        Retention deleted those files, so the log cannot tell their last hashes again;
        without them `verify` could not check the oldest remaining file's first link.
        """
        await self.db.execute_script(schema_script(self.db.kind))  # log_files exists, in whichever version
        columns = (*FILE_COLUMNS, "pruned")
        pruned = await self.db.fetchall(f"SELECT {', '.join(columns)} FROM log_files WHERE pruned = 1")
        await drop_all(self.db)
        await create_tables(self.db)
        await self.db.write_batch([(insert_ignore(self.db.kind, "log_files", columns), pruned)])
