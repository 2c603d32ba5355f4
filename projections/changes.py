"""What a batch of logged events changes in the read models, and the merge rules.

The rules make projection idempotent and independent of batch boundaries: applying
an event twice, or two batches in either order, gives the same rows. Every rule here
is also written in SQL (projections.sql_recorder); the contract tests hold them equal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from eventlog.events import LEGACY, PUSH, SYNC, Event, body_digest, decode_line, line_hash
from eventlog.files import LogLine
from projections.readings import (
    LEGACY_DEVICES,
    LEGACY_SENSORS,
    MAX_ID,
    InvalidBody,
    Parsed,
    Reading,
    flag_bool,
    integer_text,
    parse_id,
    parse_platform_time,
    read_event,
)

BLOCK_LINES = 64
_USER_NAMESPACE = uuid.UUID("6f1f3c1e-8d55-4c41-9a63-1f3e2b7a9c00")


@lru_cache(maxsize=65536)
def user_uuid(tlink_user_id: int) -> str:
    """The users.id of a TLINK user: a UUID derived from the id, so replays agree."""
    return str(uuid.uuid5(_USER_NAMESPACE, f"tlink-user:{tlink_user_id}"))


@dataclass(frozen=True, slots=True)
class Placed:
    """An event at its place in the log, with what is already known of its body (None: read it)."""

    event: Event
    day: str
    line_no: int
    offset: int
    length: int
    hash: str
    parsed: Parsed | None = None

    @property
    def end(self) -> int:
        """Offset just past the line."""
        return self.offset + self.length


def placed_line(line: LogLine) -> Placed:
    """A log line read back from its file, at its place."""
    event, _ = decode_line(line.raw)
    return Placed(event, line.day, line.line_no, line.offset, len(line.raw) + 1, line_hash(line.raw))


@dataclass(frozen=True, slots=True)
class UserRow:
    tlink_user_id: int
    parent_user_id: str | None
    parent_event_id: str | None  # the event that said parent_user_id (None: none said one)
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DevicePushRow:
    device_id: int
    tlink_user_id: int
    event_id: str  # the owner (tlink_user_id) is that of the device's greatest event id
    parent_user_id: str | None
    last_flag: str | None
    last_push_time: datetime | None
    last_event_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceMetaRow:
    device_id: int
    tlink_user_id: int
    event_id: str
    device_name: str | None
    device_no: str | None
    group_id: int | None
    lat: str | None
    lng: str | None
    is_line: bool | None
    meta_updated_at: datetime


class SensorLatestRow(NamedTuple):
    """A sensor's latest reading; a named tuple, as one is made for every reading."""

    sensor_id: int
    device_id: int
    sensor_type_id: int | None
    unit: str | None
    reading: Reading


@dataclass(frozen=True, slots=True)
class SensorMetaRow:
    sensor_id: int
    device_id: int
    sensor_name: str | None
    sensor_type_id: int | None
    unit: str | None
    ordernum: int | None
    meta_updated_at: datetime


@dataclass(frozen=True, slots=True)
class BlockRow:
    device_id: int
    day: str
    block_no: int
    start_offset: int
    end_offset: int
    first_line: int
    min_recorded_at: datetime | None
    max_recorded_at: datetime | None


@dataclass(frozen=True, slots=True)
class FileRow:
    device_id: int
    day: str
    line_count: int
    byte_count: int
    last_hash: str


SensorKey = tuple[int, int]  # (device_id, sensor_id): two devices may report the same sensor id
ReadingKey = tuple[int, int, datetime]  # (device_id, sensor_id, recorded_at)


@dataclass(slots=True)
class Changes:
    """Rows one batch writes, already merged by the rules below."""

    events: list[Placed] = field(default_factory=list)
    users: dict[int, UserRow] = field(default_factory=dict)
    device_pushes: dict[int, DevicePushRow] = field(default_factory=dict)
    device_meta: dict[int, DeviceMetaRow] = field(default_factory=dict)
    sensor_latest: dict[SensorKey, SensorLatestRow] = field(default_factory=dict)
    sensor_meta: dict[SensorKey, SensorMetaRow] = field(default_factory=dict)
    readings: dict[ReadingKey, tuple[int, Reading, str]] = field(default_factory=dict)  # -> (device, reading, event)
    blocks: dict[tuple[int, str, int], BlockRow] = field(default_factory=dict)
    files: dict[tuple[int, str], FileRow] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # push event id -> body digest (duplicate detection)


# ------------------------------------------------------------------ merge rules


def merge_user(old: UserRow | None, new: UserRow) -> UserRow:
    """Events of several devices meet here, in any order: the parent said by the greatest
    event id wins, and `updated_at` is the newest receipt."""
    if old is None:
        return new
    said = new if _later_id(new.parent_event_id, old.parent_event_id) else old
    return UserRow(new.tlink_user_id, said.parent_user_id, said.parent_event_id, max(old.updated_at, new.updated_at))


def _later_id(new: str | None, old: str | None) -> bool:
    return new is not None and (old is None or new > old)


def merge_device_push(old: DevicePushRow | None, new: DevicePushRow) -> DevicePushRow:
    """The last push received wins, except `last_push_time`: the newest upload time ever pushed."""
    if old is None:
        return new
    winner = new if new.last_event_at >= old.last_event_at else old
    newest = _greatest(old.last_push_time, new.last_push_time)
    return winner if winner.last_push_time == newest else replace(winner, last_push_time=newest)


def merge_device_meta(old: DeviceMetaRow | None, new: DeviceMetaRow) -> DeviceMetaRow:
    return new if old is None or new.meta_updated_at >= old.meta_updated_at else old


def merge_sensor_latest(old: SensorLatestRow | None, new: SensorLatestRow) -> SensorLatestRow:
    """Newest reading time wins; on a tie the reading seen first stays."""
    if old is None:
        return new
    type_id = old.sensor_type_id if old.sensor_type_id is not None else new.sensor_type_id
    unit = old.unit if old.unit is not None else new.unit
    winner = new if new.reading.recorded_at > old.reading.recorded_at else old
    if winner.sensor_type_id == type_id and winner.unit == unit:
        return winner  # the common case: no copy
    return winner._replace(sensor_type_id=type_id, unit=unit)


def merge_sensor_meta(old: SensorMetaRow | None, new: SensorMetaRow) -> SensorMetaRow:
    """The newest sync wins; a type or unit it leaves out stays as it was."""
    if old is None:
        return new
    newer, older = (new, old) if new.meta_updated_at >= old.meta_updated_at else (old, new)
    if (newer.sensor_type_id is not None or older.sensor_type_id is None) and (
        newer.unit is not None or older.unit is None
    ):
        return newer
    type_id = older.sensor_type_id if newer.sensor_type_id is None else newer.sensor_type_id
    return replace(newer, sensor_type_id=type_id, unit=newer.unit if newer.unit is not None else older.unit)


def merge_block(old: BlockRow | None, new: BlockRow) -> BlockRow:
    if old is None:
        return new
    return replace(
        old,
        start_offset=min(old.start_offset, new.start_offset),
        end_offset=max(old.end_offset, new.end_offset),
        first_line=min(old.first_line, new.first_line),
        min_recorded_at=_least(old.min_recorded_at, new.min_recorded_at),
        max_recorded_at=_greatest(old.max_recorded_at, new.max_recorded_at),
    )


def merge_file(old: FileRow | None, new: FileRow) -> FileRow:
    return new if old is None or new.byte_count >= old.byte_count else old


def _least(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _put(target: dict[Any, Any], key: Any, row: Any, merge: Any) -> None:
    target[key] = merge(target.get(key), row)


# ------------------------------------------------------------------ events to rows


def changes_of(batch: list[Placed]) -> Changes:
    """All rows a batch of placed events writes."""
    changes = Changes()
    spans: dict[tuple[int, str, int], list[Any]] = {}  # a block's range, widened in place: no row copy per line
    for placed in batch:
        _add_event(changes, spans, placed)
    for (device_id, day, block_no), (start, end, first, low, high) in spans.items():
        changes.blocks[(device_id, day, block_no)] = BlockRow(device_id, day, block_no, start, end, first, low, high)
    return changes


def _add_event(changes: Changes, spans: dict[tuple[int, str, int], list[Any]], placed: Placed) -> None:
    """Fold one event into the batch's changes; its block's span is widened in `spans`."""
    event = placed.event
    changes.events.append(placed)
    known = placed.parsed or read_event(event)
    readings = known.readings
    _put(changes.users, event.user_id, _user_row(event), merge_user)
    if event.type == PUSH:
        changes.digests[event.id] = known.digest or body_digest(event.body)
        _put(changes.device_pushes, event.device_id, _device_push_row(event, known.sent), merge_device_push)
        types = {int(e["sensorsId"]): e for e in event.body["sensorsDates"]}
        for reading in readings:
            entry = types.get(reading.sensor_id, {})
            _add_reading(changes, event, reading, _int_or_none(entry.get("sensorsTypeId")), entry.get("unit"))
    else:  # a sync's device object, a backfill's history page (readings without type or unit), a failure
        if event.type == SYNC:
            _put(changes.device_meta, event.device_id, _device_meta_row(event), merge_device_meta)
            for meta in _sensor_meta_rows(event):
                _put(changes.sensor_meta, (meta.device_id, meta.sensor_id), meta, merge_sensor_meta)
        elif event.type == LEGACY:
            _add_legacy_row(changes, event)
        for reading in readings:
            _add_reading(changes, event, reading, None, None)
    block_no = (placed.line_no - 1) // BLOCK_LINES
    times = [r.recorded_at for r in readings]
    low, high = min(times, default=None), max(times, default=None)
    key = (event.device_id, placed.day, block_no)
    span = spans.get(key)
    if span is None:
        spans[key] = [placed.offset, placed.end, placed.line_no, low, high]
    else:  # widen it in place: no row copy per line
        span[0], span[1], span[2] = min(span[0], placed.offset), max(span[1], placed.end), min(span[2], placed.line_no)
        span[3], span[4] = _least(span[3], low), _greatest(span[4], high)
    file_row = FileRow(event.device_id, placed.day, placed.line_no, placed.end, placed.hash)
    _put(changes.files, (event.device_id, placed.day), file_row, merge_file)


def _add_reading(changes: Changes, event: Event, reading: Reading, type_id: int | None, unit: Any) -> None:
    key = (event.device_id, reading.sensor_id, reading.recorded_at)
    changes.readings.setdefault(key, (event.device_id, reading, event.id))
    row = SensorLatestRow(reading.sensor_id, event.device_id, type_id, _short(unit, 64), reading)
    _put(changes.sensor_latest, (event.device_id, reading.sensor_id), row, merge_sensor_latest)


def _user_row(event: Event) -> UserRow:
    parent = _short(event.body.get("parentUserId"), 64) if event.type == PUSH else None
    return UserRow(event.user_id, parent, None if parent is None else event.id, event.received_at)


def _device_push_row(event: Event, sent: datetime | None) -> DevicePushRow:
    body = event.body
    if sent is None:
        try:
            sent = parse_platform_time(body.get("time"))
        except InvalidBody:
            sent = None
    return DevicePushRow(
        device_id=event.device_id,
        tlink_user_id=event.user_id,
        event_id=event.id,
        parent_user_id=_short(body.get("parentUserId"), 64),
        last_flag=_short(body.get("flag"), 16),
        last_push_time=sent,
        last_event_at=event.received_at,
    )


def _device_meta_row(event: Event) -> DeviceMetaRow:
    body = event.body
    return DeviceMetaRow(
        device_id=event.device_id,
        tlink_user_id=event.user_id,
        event_id=event.id,
        device_name=_short(body.get("deviceName"), 255),
        device_no=_short(body.get("deviceNo"), 128),
        group_id=_int_or_none(body.get("groupId")),
        lat=_short(body.get("lat"), 32) or None,
        lng=_short(body.get("lng"), 32) or None,
        is_line=flag_bool(body.get("isLine")),
        meta_updated_at=event.received_at,
    )


def _sensor_meta_rows(event: Event) -> list[SensorMetaRow]:
    rows = []
    for sensor in event.body.get("sensorsList") or []:
        sensor_id = _int_or_none(sensor.get("id")) if isinstance(sensor, dict) else None
        if sensor_id is None:
            continue
        rows.append(
            SensorMetaRow(
                sensor_id=sensor_id,
                device_id=event.device_id,
                sensor_name=_short(sensor.get("sensorName"), 255),
                sensor_type_id=_int_or_none(sensor.get("sensorTypeId")),
                unit=_short(sensor.get("unit"), 64),
                ordernum=_int_or_none(sensor.get("ordernum")),
                meta_updated_at=event.received_at,
            )
        )
    return rows


def _add_legacy_row(changes: Changes, event: Event) -> None:
    """An imported row of the old `devices` or `sensors` table: metadata as of its import, like a sync's
    (the next sync replaces what it says)."""
    table = (event.source or {}).get("table")
    body = event.body
    if table == LEGACY_DEVICES:
        row = DeviceMetaRow(
            device_id=event.device_id, tlink_user_id=event.user_id, event_id=event.id,
            device_name=_short(body.get("device_name"), 255), device_no=_short(body.get("device_no"), 128),
            group_id=_int_or_none(body.get("group_id")), lat=_short(body.get("lat"), 32) or None,
            lng=_short(body.get("lng"), 32) or None, is_line=None, meta_updated_at=event.received_at,
        )  # fmt: skip
        _put(changes.device_meta, event.device_id, row, merge_device_meta)
    elif table == LEGACY_SENSORS:
        try:
            sensor_id = parse_id(body.get("sensors_id"), "sensors_id")
        except InvalidBody:
            return
        meta = SensorMetaRow(
            sensor_id, event.device_id, None, _int_or_none(body.get("sensors_type_id")), _short(body.get("unit"), 64),
            None, event.received_at,
        )  # fmt: skip
        _put(changes.sensor_meta, (meta.device_id, sensor_id), meta, merge_sensor_meta)


def _int_or_none(value: Any) -> int | None:
    """An integer from vendor metadata (number or digit string); anything else is unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = integer_text(value, signed=True)
    elif isinstance(value, float) and value.is_integer() and abs(value) < 2.0**63:
        value = int(value)
    return value if isinstance(value, int) and abs(value) <= MAX_ID else None


def _short(value: Any, limit: int) -> str | None:
    """Text cut to its column's width, so odd vendor data never stops the projection."""
    return None if value is None else str(value)[:limit]


def event_row_body(event: Event) -> str:
    """The body as stored in the events table."""
    return orjson.dumps(event.body).decode()

