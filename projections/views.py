"""The read side's SQL: users, devices and sensors from the read models (history: projections.history).

Plain queries, one function each, returning frozen rows with values normalized across
backends (SQLite gives datetimes as text, MySQL as datetime objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.db import Database, Row, placeholders


@dataclass(frozen=True, slots=True)
class UserView:
    """A TLINK user."""

    tlink_user_id: int
    parent_user_id: str | None


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device and what its last push and last sync said."""

    device_id: int
    tlink_user_id: int
    parent_user_id: str | None
    device_name: str | None
    device_no: str | None
    group_id: int | None
    lat: str | None
    lng: str | None
    last_flag: str | None
    last_push_time: datetime | None


@dataclass(frozen=True, slots=True)
class SensorView:
    """A sensor with its latest reading (newest reading time)."""

    sensor_id: int
    device_id: int
    sensor_name: str | None
    sensor_type_id: int | None
    unit: str | None
    latest_value: str | None
    latest_raw_value: str | None
    latest_recorded_at: datetime | None
    latest_sensor_timestamp: str | None
    is_alarm: bool | None
    is_line: bool | None


def platform_time(value: Any) -> datetime | None:
    """A stored platform time (text on SQLite, datetime on MySQL) as a naive datetime."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


async def find_user(db: Database, tlink_user_id: int) -> UserView | None:
    """The user with this TLINK id."""
    sql = "SELECT tlink_user_id, parent_user_id FROM users WHERE tlink_user_id = %s"
    rows = await db.fetchall(sql, [tlink_user_id])
    return UserView(int(rows[0][0]), _text(rows[0][1])) if rows else None


_DEVICE_COLUMNS = (
    "device_id, tlink_user_id, parent_user_id, device_name, device_no, group_id, lat, lng, last_flag, last_push_time"
)


def _device(row: Row) -> DeviceView:
    return DeviceView(
        device_id=int(row[0]),
        tlink_user_id=int(row[1]),
        parent_user_id=_text(row[2]),
        device_name=_text(row[3]),
        device_no=_text(row[4]),
        group_id=_int(row[5]),
        lat=_text(row[6]),
        lng=_text(row[7]),
        last_flag=_text(row[8]),
        last_push_time=platform_time(row[9]),
    )


async def find_device(db: Database, tlink_user_id: int, device_id: int) -> DeviceView | None:
    """The device, if it is this user's."""
    rows = await db.fetchall(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = %s AND tlink_user_id = %s", [device_id, tlink_user_id]
    )
    return _device(rows[0]) if rows else None


async def count_devices(db: Database, tlink_user_id: int) -> int:
    """How many devices the user has."""
    rows = await db.fetchall("SELECT COUNT(*) FROM devices WHERE tlink_user_id = %s", [tlink_user_id])
    return int(rows[0][0])


async def list_devices(db: Database, tlink_user_id: int, limit: int, offset: int) -> list[DeviceView]:
    """One page of the user's devices, by device id."""
    rows = await db.fetchall(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE tlink_user_id = %s ORDER BY device_id LIMIT %s OFFSET %s",
        [tlink_user_id, limit, offset],
    )
    return [_device(r) for r in rows]


async def sensors_of(db: Database, device_ids: Sequence[int]) -> dict[int, list[SensorView]]:
    """The sensors of some devices (one query), each device's in display order."""
    result: dict[int, list[SensorView]] = {d: [] for d in device_ids}
    if not device_ids:
        return result
    rows = await db.fetchall(
        "SELECT sensor_id, device_id, sensor_name, sensor_type_id, unit, latest_value, latest_raw_value,"
        " latest_recorded_at, latest_sensor_timestamp, is_alarm, is_line FROM sensors"
        f" WHERE device_id IN ({placeholders(len(device_ids))})"
        " ORDER BY device_id, COALESCE(ordernum, 2147483647), sensor_id",
        list(device_ids),
    )
    for r in rows:
        sensor = SensorView(
            sensor_id=int(r[0]),
            device_id=int(r[1]),
            sensor_name=_text(r[2]),
            sensor_type_id=_int(r[3]),
            unit=_text(r[4]),
            latest_value=_text(r[5]),
            latest_raw_value=_text(r[6]),
            latest_recorded_at=platform_time(r[7]),
            latest_sensor_timestamp=_text(r[8]),
            is_alarm=_flag(r[9]),
            is_line=_flag(r[10]),
        )
        result[sensor.device_id].append(sensor)
    return result
