"""`tlink-push import-legacy`: the original Flask service's data, appended to the log as `legacy` events.

The old MySQL database (`users` with UUID ids, `devices`, `sensors`, `sensor_readings`) is
read row by row, by column name; each row of `devices`, `sensors` and `sensor_readings`
becomes one `legacy` event of its device, the row itself as the body (datetimes and
decimals as text) and `source` naming its table and key. The old per-device sync logs
(pipe-delimited lines, in the same folders and file names as the new daily logs) are moved
to `<SYNC_LOG_DIR>/legacy-imported/<deviceId>/` first, then each line becomes one event
(`body`: {"line": the line}, `source`: the moved file and the line number).

What was imported is decided from the new log itself: a row or line whose `source` is
already on a `legacy` line is not imported again. Rows and lines that cannot be placed (no
device, no owner, no reading time, a line not of the old format) are reported, counted and
written to the run's record (`legacy-imported/import-<time>.json`), never dropped
silently. It runs with the service stopped: it takes the log root's writer lock, and the
events go through the service's one path (Ingestor.record), so the read models and
history show them like any other reading.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from eventlog.events import LEGACY, format_instant, utc_now
from eventlog.files import device_days, device_ids, first_line, fsync_dir, log_path, read_lines, side_files
from eventlog.foreign import LEGACY_PIPE_LINE, describe_line
from projections.db import mysql_connect, parse_database_url
from projections.readings import (
    LEGACY_DEVICES,
    LEGACY_READINGS,
    LEGACY_SENSORS,
    InvalidBody,
    Reading,
    legacy_line_readings,
    legacy_row_reading,
    parse_id,
)
from service.bootstrap import Services, open_services
from service.config import Settings

IMPORTED_DIR = "legacy-imported"  # under SYNC_LOG_DIR: the old files, moved here whole, and the records
USERS = "users"
# The columns the import needs, by table; every other column is kept in the body as it is.
REQUIRED_COLUMNS = {
    USERS: ("id", "tlink_user_id"),
    LEGACY_DEVICES: ("id", "device_id", "user_id"),
    LEGACY_SENSORS: ("id", "device_id", "sensors_id"),
    LEGACY_READINGS: ("id", "sensor_id", "recorded_at"),
}
PARTIAL_SUFFIX = ".partial"  # an old file being copied into legacy-imported/ from another file system
ROWS_PER_QUERY = 1000
EVENTS_AT_ONCE = 500  # appended together: they share group commits
_LEGACY_MARK = b'"type":"legacy"'
_FOREIGN_SUFFIX_RE = re.compile(r"\.foreign(?:\.\d+)?$")


class LegacyError(Exception):
    """The old database cannot be read as the original service's: nothing was changed."""


class ImportInterrupted(Exception):
    """The old database failed part-way: what was appended stays (a new run imports the rest)."""


@dataclass(slots=True)
class Count:
    """What became of the rows of one table or the lines of one file."""

    read: int = 0
    imported: int = 0
    already: int = 0  # on a legacy line of the log already (an earlier run)
    not_imported: int = 0

    def as_record(self) -> dict[str, int]:
        return {"read": self.read, "imported": self.imported, "alreadyImported": self.already,
                "notImported": self.not_imported}  # fmt: skip


@dataclass(slots=True)
class ImportReport:
    """One run: what was read, imported, skipped as already imported, and not imported (with why)."""

    database: str
    started: datetime
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old file, where it is now), as written
    users: int = 0
    tables: dict[str, Count] = field(default_factory=dict)
    files: dict[str, Count] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)  # each with its source and `reason`
    record: Path | None = None

    @property
    def imported(self) -> int:
        return sum(c.imported for c in self.tables.values()) + sum(c.imported for c in self.files.values())

    def refuse(self, count: Count, source: dict[str, Any], reason: str) -> None:
        count.not_imported += 1
        self.problems.append({**source, "reason": reason})


def describe_source(source: dict[str, Any]) -> str:
    """A row or line for a human: `sensor_readings id=17`, `legacy-imported/5001/x.log line 3`."""
    if "file" in source:
        return f"{source['file']} line {source['line']}"
    key = " ".join(f"{name}={value}" for name, value in source["key"].items())
    return f"{source['table']} {key}"


def source_key(source: dict[str, Any]) -> bytes:
    """What identifies an imported row or line: its table and key, or its file and line number."""
    return orjson.dumps({k: source[k] for k in ("table", "key", "file", "line") if k in source},
                        option=orjson.OPT_SORT_KEYS)  # fmt: skip


def imported_sources(root: Path) -> set[bytes]:
    """The source of every `legacy` line in the log (what earlier runs imported)."""
    found = set()
    for device_id in device_ids(root):
        for day in device_days(root, device_id):
            for line in read_lines(log_path(root, device_id, day)):
                if _LEGACY_MARK not in line.raw:
                    continue
                try:
                    source = orjson.loads(line.raw).get("source")
                    found.add(source_key(source))
                except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                    continue  # not an event line: verify reports it
    return found


def json_value(value: Any) -> Any:
    """A column's value as JSON: datetimes, dates, times and decimals as text, the rest unchanged."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value).hex()
    return value


# ---------------------------------------------------------------- the old database


class OldDatabase:
    """The original service's MySQL database, read with one blocking connection (in a worker thread)."""

    def __init__(self, url: str) -> None:
        try:
            parsed = parse_database_url(url)
        except ValueError as exc:
            raise LegacyError(f"--mysql: {exc}") from None
        if parsed.kind != "mysql":
            raise LegacyError("--mysql must be a mysql:// URL of the original service's database")
        self.url = parsed
        self.conn: Any = None

    @property
    def shown(self) -> str:
        """The URL without its password."""
        return f"mysql://{self.url.user}@{self.url.host}:{self.url.port}/{self.url.database}"

    def open(self) -> None:
        """Connect and check that the original service's tables and columns are there (LegacyError if not)."""
        import pymysql
        import pymysql.cursors

        try:
            self.conn = mysql_connect(self.url, self.url.database, charset="utf8mb4", connect_timeout=5,
                                      cursorclass=pymysql.cursors.DictCursor)  # fmt: skip
        except pymysql.Error as exc:
            raise LegacyError(f"cannot read the old database {self.shown}: {exc}") from None
        for table, needed in REQUIRED_COLUMNS.items():
            columns = self._columns(table)
            if columns is None:
                raise LegacyError(
                    f"the database {self.shown} has no table {table}: not the original service's database"
                    f" (it needs {', '.join(REQUIRED_COLUMNS)})"
                )
            missing = [c for c in needed if c not in columns]
            if missing:
                raise LegacyError(f"table {table} of {self.shown} has no column {', '.join(missing)}")

    def _columns(self, table: str) -> set[str] | None:
        rows = self._query(
            "SELECT column_name AS name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (self.url.database, table),
        )
        return {str(row["name"]).lower() for row in rows} or None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        import pymysql

        try:
            with self.conn.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        except pymysql.Error as exc:
            raise LegacyError(f"reading the old database {self.shown} failed: {exc}") from None

    def page(self, table: str, after: Any = None) -> list[dict[str, Any]]:
        """The next rows of a table by `id` (after `after`), each value as JSON (json_value)."""
        where, params = ("", ()) if after is None else (" WHERE `id` > %s", (after,))
        rows = self._query(f"SELECT * FROM `{table}`{where} ORDER BY `id` LIMIT {ROWS_PER_QUERY}", params)
        return [{name: json_value(value) for name, value in row.items()} for row in rows]

    async def rows(self, table: str) -> AsyncIterator[dict[str, Any]]:
        """Every row of a table, by `id`, each page read in a worker thread."""
        after: Any = None
        while page := await asyncio.to_thread(self.page, table, after):
            after = page[-1]["id"]
            for row in page:
                yield row

    async def table(self, table: str) -> dict[Any, dict[str, Any]]:
        """A whole (small) table: `id` -> row."""
        return {row["id"]: row async for row in self.rows(table)}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# ---------------------------------------------------------------- the old log files


def old_files(folder: Path) -> list[tuple[int, Path]]:
    """(device, path) of every daily file (or `.foreign` file) in `folder` whose first line is an old sync-log line."""
    found = []
    for device_id in device_ids(folder) if folder.is_dir() else []:
        candidates = [log_path(folder, device_id, day) for day in device_days(folder, device_id)]
        candidates += [p for p in side_files(folder, device_id) if _FOREIGN_SUFFIX_RE.search(p.name)]
        for path in candidates:
            first = first_line(path)
            if first is not None and describe_line(first[0]).startswith(LEGACY_PIPE_LINE):
                found.append((device_id, path))
    return found


def move_aside(root: Path, device_id: int, path: Path) -> Path:
    """Move an old file, whole, to `<root>/legacy-imported/<device>/<its daily name>` (a free name); fsynced."""
    folder = root / IMPORTED_DIR / str(device_id)
    folder.mkdir(parents=True, exist_ok=True)
    name = _FOREIGN_SUFFIX_RE.sub("", path.name)
    target, n = folder / name, 1
    while target.exists():
        n += 1
        target = folder / f"{name}.{n}"
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.move(path, partial)  # a rename within one file system, else a copy and a delete
    os.replace(partial, target)  # so a copy cut short is never taken for a whole old file
    for changed in {folder, folder.parent, root, path.parent}:
        fsync_dir(changed)
    return target


def imported_files(root: Path) -> list[tuple[int, Path]]:
    """(device, path) of the old files kept under `legacy-imported/`, in order."""
    top = root / IMPORTED_DIR
    if not top.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for folder in sorted(top.iterdir(), key=lambda p: p.name):
        if folder.is_dir() and folder.name.isdigit():
            found.extend(
                (int(folder.name), path)
                for path in sorted(folder.iterdir())
                if path.is_file() and not path.name.endswith(PARTIAL_SUFFIX)
            )
    return found


def file_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the newline) of every line, an unterminated last line included."""
    with open(path, "rb") as handle:
        data = handle.read()
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    yield from enumerate(parts, start=1)


# ---------------------------------------------------------------- the run


Pending = tuple[int, int, dict[str, Any], list[Reading], dict[str, Any]]  # device, user, body, readings, source


async def import_legacy(
    settings: Settings, mysql_url: str, logs: Path | None, progress: Callable[[int], None]
) -> ImportReport:
    """Import the old database's rows and the old log files (from `logs`, default SYNC_LOG_DIR).

    LegacyError (before anything changes) when the old database cannot be read; LogLocked
    while a service holds the log root.
    """
    if logs is not None and not logs.is_dir():
        raise LegacyError(f"--logs {logs} is not a folder")
    old = OldDatabase(mysql_url)
    new = parse_database_url(settings.DATABASE_URL)
    if new.kind == "mysql" and (new.host, new.port, new.database) == (old.url.host, old.url.port, old.url.database):
        raise LegacyError(
            "--mysql names the new service's own database (DATABASE_URL): the new tables would be made among the"
            " old ones of the same names; give the new service a database of its own"
        )
    await asyncio.to_thread(old.open)
    try:
        return await _run(settings, old, logs or settings.SYNC_LOG_DIR, progress)
    finally:
        old.close()


async def _run(settings: Settings, old: OldDatabase, logs: Path, progress: Callable[[int], None]) -> ImportReport:
    root = settings.SYNC_LOG_DIR
    report = ImportReport(database=old.shown, started=utc_now())
    users = {key: row["tlink_user_id"] for key, row in (await old.table(USERS)).items()}
    report.users = len(users)
    devices, sensors = await old.table(LEGACY_DEVICES), await old.table(LEGACY_SENSORS)
    # Always as one node (never on the bus): the writer lock is exclusive, so no cluster node may run meanwhile.
    local = settings.model_copy(update={"BUS_URL": []})
    async with open_services(local) as services:  # takes the writer lock; start-up's repair runs first
        try:
            await _import(services, root, old, logs, report, progress, _Places(users, devices, sensors))
        except LegacyError as exc:
            raise ImportInterrupted(str(exc)) from None
    report.record = write_record(root, report)
    return report


async def _import(services: Services, root: Path, old: OldDatabase, logs: Path, report: ImportReport,
                  progress: Callable[[int], None], places: _Places) -> None:  # fmt: skip
    """Move the old files aside, then append every row and line not yet in the log."""
    known = await asyncio.to_thread(imported_sources, root)
    for device_id, path in old_files(logs):
        target = move_aside(root, device_id, path)
        report.moved.append((str(path), str(target)))
    done = 0

    async def flush(pending: list[Pending]) -> None:
        nonlocal done
        await asyncio.gather(*(
            services.ingestor.record(LEGACY, device, user, body, readings, source=source)
            for device, user, body, readings, source in pending
        ))  # fmt: skip
        done += len(pending)
        progress(done)
        pending.clear()

    pending: list[Pending] = []

    def offer(count: Count, placed: Placement, body: dict[str, Any], source: dict[str, Any]) -> None:
        count.read += 1
        if source_key(source) in known:
            count.already += 1
        elif isinstance(placed, str):
            report.refuse(count, source, placed)
        else:
            count.imported += 1
            pending.append((placed[0], placed[1], body, placed[2], source))

    for table, rows in ((LEGACY_DEVICES, _each(places.devices)), (LEGACY_SENSORS, _each(places.sensors)),
                        (LEGACY_READINGS, old.rows(LEGACY_READINGS))):  # fmt: skip
        count = report.tables.setdefault(table, Count())
        async for row in rows:
            source: dict[str, Any] = {"table": table, "key": {"id": row["id"]}}
            offer(count, places.place(table, row, source), row, source)
            if len(pending) >= EVENTS_AT_ONCE:
                await flush(pending)
        await flush(pending)
    owners = places.owners()
    for device_id, path in imported_files(root):
        name = str(path.relative_to(root))
        count = report.files.setdefault(name, Count())
        for line_no, raw in file_lines(path):
            source = {"file": name, "line": line_no}
            placed, body = _place_line(device_id, owners.get(device_id), raw)
            offer(count, placed, body, source)
            if len(pending) >= EVENTS_AT_ONCE:
                await flush(pending)
        await flush(pending)


async def _each(rows: dict[Any, dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for row in rows.values():
        yield row


Placement = tuple[int, int, list[Reading]] | str  # (device, user, readings), or why the row or line has no place


class _Places:
    """Where each old row goes: its TLINK device and user (and a reading's sensor), or why it cannot be placed."""

    def __init__(self, users: dict[Any, Any], devices: dict[Any, dict[str, Any]],
                 sensors: dict[Any, dict[str, Any]]) -> None:  # fmt: skip
        self.users, self.devices, self.sensors = users, devices, sensors

    def device(self, key: Any) -> tuple[int, int] | str:
        """(TLINK device id, TLINK user id) of the old devices row `key`, or why there is none."""
        if key is None:
            return "it has no device (device_id is NULL)"
        row = self.devices.get(key)
        if row is None:
            return f"its device (devices id={key}) is not in the devices table"
        try:
            device_id = parse_id(row.get("device_id"), "devices.device_id")
        except InvalidBody as exc:
            return f"its device (devices id={key}): {exc}"
        if row.get("user_id") is None:
            return f"its device {device_id} has no user (user_id is NULL)"
        if row["user_id"] not in self.users:
            return f"the user {row['user_id']} of its device {device_id} is not in the users table"
        try:
            return device_id, parse_id(self.users[row["user_id"]], "users.tlink_user_id")
        except InvalidBody as exc:
            return f"the user {row['user_id']} of its device {device_id}: {exc}"

    def place(self, table: str, row: dict[str, Any], source: dict[str, Any]) -> Placement:
        if table == LEGACY_DEVICES:
            found = self.device(row["id"])
            return found if isinstance(found, str) else (*found, [])
        if table == LEGACY_SENSORS:
            found = self.device(row.get("device_id"))
            if isinstance(found, str):
                return found
            try:
                parse_id(row.get("sensors_id"), "sensors_id")
            except InvalidBody as exc:
                return str(exc)
            return (*found, [])
        if row.get("sensor_id") is None:
            return "it has no sensor (sensor_id is NULL)"
        sensor = self.sensors.get(row["sensor_id"])
        if sensor is None:
            return f"its sensor (sensors id={row['sensor_id']}) is not in the sensors table"
        found = self.device(sensor.get("device_id"))
        if isinstance(found, str):
            return f"its sensor (sensors id={row['sensor_id']}): {found}"
        source["sensorsId"] = sensor.get("sensors_id")
        try:
            reading = legacy_row_reading(row, source)
        except InvalidBody as exc:
            del source["sensorsId"]
            return str(exc)
        return (*found, [reading])

    def owners(self) -> dict[int, int | str]:
        """TLINK device id -> its TLINK user id (or why it has none), from the old devices table."""
        found: dict[int, int | str] = {}
        for key in self.devices:
            placed = self.device(key)
            if not isinstance(placed, str):
                found[placed[0]] = placed[1]
        return found


def _place_line(device_id: int, owner: int | str | None, raw: bytes) -> tuple[Placement, dict[str, Any]]:
    """(where a line of an old file goes, or why it cannot be placed; its body)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"not UTF-8 text ({len(raw)} bytes)", {}
    body = {"line": text}
    if owner is None:
        return f"device {device_id} is not in the old devices table, so its owner is unknown", body
    if isinstance(owner, str):
        return owner, body
    try:
        readings = legacy_line_readings(text, device_id)
    except InvalidBody as exc:
        return f"not a line of the old sync log: {exc}", body
    return (device_id, owner, readings), body


def write_record(root: Path, report: ImportReport) -> Path:
    """The run's record, `legacy-imported/import-<UTC time>.json`, written whole (temporary file, fsync, rename)."""
    finished = utc_now()
    folder = root / IMPORTED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"import-{report.started:%Y%m%dT%H%M%S}Z.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"import-{report.started:%Y%m%dT%H%M%S}Z.{n}.json"
    doc = {
        "startedAt": format_instant(report.started),
        "finishedAt": format_instant(finished),
        "database": report.database,
        "users": report.users,
        "tables": {table: count.as_record() for table, count in report.tables.items()},
        "moved": [{"from": old, "to": new} for old, new in report.moved],
        "files": {name: count.as_record() for name, count in report.files.items()},
        "imported": report.imported,
        "notImported": report.problems,
    }
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        handle.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(folder)
    return path
