"""The read side's SQL: users, devices and sensors from the read models (history: projections.history).

Plain queries, one function each, returning frozen views with values normalized across
backends (SQLite gives datetimes as text, MySQL as datetime objects). A view's fields
are named as its table's columns, and the queries select exactly them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
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


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


# How a stored value becomes a view's value, by the type a view's field declares. A view's
# fields are named as the columns they are read from, so each view's SELECT list and the
# making of its rows come from the view itself.
_READERS: dict[str, Any] = {
    "int": int, "int | None": _int, "str | None": _text, "bool | None": _bool, "datetime | None": platform_time,
}  # fmt: skip


class _Columns:
    """The SELECT list of a view and the making of a view from a row of it."""

    def __init__(self, view: type[Any]) -> None:
        self.view = view
        self.names = [f.name for f in fields(view)]
        self._readers = [_READERS[str(f.type)] for f in fields(view)]
        self.sql = ", ".join(self.names)

    def make(self, row: Row) -> Any:
        """The view of one row of this SELECT list."""
        return self.view(*(read(value) for read, value in zip(self._readers, row, strict=True)))


_USER = _Columns(UserView)
_DEVICE = _Columns(DeviceView)
_SENSOR = _Columns(SensorView)


async def find_user(db: Database, tlink_user_id: int) -> UserView | None:
    """The user with this TLINK id."""
    rows = await db.fetchall(f"SELECT {_USER.sql} FROM users WHERE tlink_user_id = %s", [tlink_user_id])
    return _USER.make(rows[0]) if rows else None


async def find_device(db: Database, tlink_user_id: int, device_id: int) -> DeviceView | None:
    """The device, if it is this user's."""
    rows = await db.fetchall(
        f"SELECT {_DEVICE.sql} FROM devices WHERE device_id = %s AND tlink_user_id = %s", [device_id, tlink_user_id]
    )
    return _DEVICE.make(rows[0]) if rows else None


async def count_devices(db: Database, tlink_user_id: int) -> int:
    """How many devices the user has."""
    rows = await db.fetchall("SELECT COUNT(*) FROM devices WHERE tlink_user_id = %s", [tlink_user_id])
    return int(rows[0][0])


async def list_devices(db: Database, tlink_user_id: int, limit: int, offset: int) -> list[DeviceView]:
    """One page of the user's devices, by device id."""
    rows = await db.fetchall(
        f"SELECT {_DEVICE.sql} FROM devices WHERE tlink_user_id = %s ORDER BY device_id LIMIT %s OFFSET %s",
        [tlink_user_id, limit, offset],
    )
    return [_DEVICE.make(r) for r in rows]


async def owned_devices(
    db: Database, user_ids: Sequence[int] | None, device_id: int | None = None
) -> list[tuple[int, int]]:
    """(owner, device) of these users' devices (None: every user's), or only `device_id`, by device id."""
    sql, params = ["SELECT tlink_user_id, device_id FROM devices WHERE 1 = 1"], []
    if user_ids is not None:
        if not user_ids:
            return []
        sql.append(f"AND tlink_user_id IN ({placeholders(len(user_ids))})")
        params += list(user_ids)
    if device_id is not None:
        sql.append("AND device_id = %s")
        params.append(device_id)
    return [(int(r[0]), int(r[1])) for r in await db.fetchall(" ".join(sql) + " ORDER BY device_id", params)]


async def sensors_of(db: Database, device_ids: Sequence[int]) -> dict[int, list[SensorView]]:
    """The sensors of some devices (one query), each device's in display order."""
    result: dict[int, list[SensorView]] = {d: [] for d in device_ids}
    if not device_ids:
        return result
    rows = await db.fetchall(
        f"SELECT {_SENSOR.sql} FROM sensors WHERE device_id IN ({placeholders(len(device_ids))})"
        " ORDER BY device_id, COALESCE(ordernum, 2147483647), sensor_id",
        list(device_ids),
    )
    for row in rows:
        sensor = _SENSOR.make(row)
        result[sensor.device_id].append(sensor)
    return result
