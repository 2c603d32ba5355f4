"""Read handlers: a user's devices, latest values, history and raw events, and the vendor reference.

Each handler parses its parameters (service.http.query), asks the read side
(projections.views for the read models, projections.history for history from the log
files, eventlog.backward for raw events) and formats the answer through its model in
service.http.schemas.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
from collections.abc import Iterator
from datetime import date, datetime, tzinfo
from functools import partial
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from eventlog.backward import device_events
from eventlog.events import utc_now
from projections import views
from projections.coverage import SensorCoverage, day_coverage
from projections.history import SqlBlockIndex, paged_histories
from projections.readings import Reading
from projections.views import DeviceView, SensorView, UserView
from service.config import Settings
from service.http import query, schemas
from service.http.keys import SERVICES, SETTINGS
from service.http.middleware import caching
from service.http.middleware.errors import ApiError, json_response
from service.http.reference import DEVICE_APIS


def answer(model: type[BaseModel], data: dict[str, Any], status: int = 200) -> web.Response:
    """Check the answer against its model, strictly (no coercion, no unknown fields), and send it.

    Strict validation leaves nothing to convert, so the checked data is what is sent.
    """
    model.model_validate(data, strict=True)
    return json_response(data, status)


# ---------------------------------------------------------------- answer parts


def answer_zone(settings: Settings) -> tzinfo | None:
    """The zone answers give reading times in: TLINK_TIMEZONE's, or None when it is unset (no offset)."""
    return settings.platform_zone if settings.TLINK_TIMEZONE else None


def _time_text(moment: datetime | None, zone: tzinfo | None = None) -> str | None:
    """A platform time as the API writes it: YYYY-MM-DDTHH:MM:SS, with its UTC offset when the zone is known."""
    if moment is None:
        return None
    return (moment if zone is None else moment.replace(tzinfo=zone)).isoformat(timespec="seconds")


def cursor_text(moment: datetime | None) -> str | None:
    """A reading time as a cursor (the `before` parameter): platform time without a zone."""
    return None if moment is None else moment.isoformat(timespec="seconds")


def user_part(user: UserView) -> dict[str, Any]:
    """The user shape."""
    return {"userId": user.tlink_user_id, "parentUserId": user.parent_user_id}


def device_part(device: DeviceView, zone: tzinfo | None = None) -> dict[str, Any]:
    """The device summary shape."""
    return {
        "deviceId": device.device_id,
        "userId": device.tlink_user_id,
        "parentUserId": device.parent_user_id,
        "deviceName": device.device_name,
        "deviceNo": device.device_no,
        "groupId": device.group_id,
        "lat": device.lat,
        "lng": device.lng,
        "lastFlag": device.last_flag,
        "lastPushTime": _time_text(device.last_push_time, zone),
    }


def sensor_part(sensor: SensorView, zone: tzinfo | None = None) -> dict[str, Any]:
    """The sensor summary shape."""
    return {
        "sensorId": sensor.sensor_id,
        "deviceId": sensor.device_id,
        "sensorName": sensor.sensor_name,
        "sensorTypeId": sensor.sensor_type_id,
        "unit": sensor.unit,
        "isAlarm": sensor.is_alarm,
        "isLine": sensor.is_line,
        "latestValue": sensor.latest_value,
        "latestRecordedAt": _time_text(sensor.latest_recorded_at, zone),
    }


def reading_part(reading: Reading, zone: tzinfo | None = None) -> dict[str, Any]:
    """The reading shape."""
    return {
        "recordedAt": _time_text(reading.recorded_at, zone),
        "sensorTimestamp": reading.sensor_timestamp,
        "value": reading.value,
        "rawValue": reading.raw_value,
        "isAlarm": reading.is_alarm,
        "isLine": reading.is_line,
    }


def latest_part(sensor: SensorView, zone: tzinfo | None = None) -> dict[str, Any] | None:
    """A sensor's latest reading from the read model, or None if it never reported."""
    if sensor.latest_recorded_at is None:
        return None
    s = sensor
    return reading_part(
        Reading(s.sensor_id, sensor.latest_recorded_at, s.latest_sensor_timestamp, s.latest_value, s.latest_raw_value,
                s.is_alarm, s.is_line),
        zone,
    )  # fmt: skip


def with_history(
    sensors: list[SensorView],
    histories: dict[int, list[Reading]],
    zone: tzinfo | None = None,
    cursors: dict[int, datetime] | None = None,
) -> list[dict[str, Any]]:
    """Sensor summaries each with its history list and the cursor of its next older page (`next`)."""
    cursors = cursors or {}
    return [
        {**sensor_part(s, zone), "history": [reading_part(r, zone) for r in histories.get(s.sensor_id, [])],
         "next": cursor_text(cursors.get(s.sensor_id))}
        for s in sensors
    ]  # fmt: skip


# ---------------------------------------------------------------- lookups


async def owner(request: web.Request) -> UserView:
    """The user of the path; 404 if unknown."""
    user_id = query.path_id(request, query.USER_ID)
    user = await views.find_user(request.app[SERVICES].db, user_id)
    if user is None:
        raise ApiError(404, f"unknown user {user_id}")
    return user


async def owned_device(request: web.Request, user: UserView, device_id: int) -> DeviceView:
    """The device if it is the user's; 404 otherwise."""
    device = await views.find_device(request.app[SERVICES].db, user.tlink_user_id, device_id)
    if device is None:
        raise ApiError(404, f"device {device_id} is not a device of user {user.tlink_user_id}")
    return device


def only_sensors(sensors: dict[int, list[SensorView]], ids: frozenset[int] | None) -> dict[int, list[SensorView]]:
    """Each device's sensors that are among `ids` (None: all of them)."""
    if ids is None:
        return sensors
    return {d: [s for s in found if s.sensor_id in ids] for d, found in sensors.items()}


async def history_pages(
    request: web.Request, sensors: dict[int, list[SensorView]], asked: query.HistoryQuery
) -> tuple[dict[int, dict[int, list[Reading]]], dict[int, dict[int, datetime]]]:
    """Each device's sensors' readings as asked, and the cursors of their next pages (projections.history)."""
    if asked.empty:
        return {}, {}
    services = request.app[SERVICES]
    root, index = services.settings.SYNC_LOG_DIR, SqlBlockIndex(services.db)
    return await paged_histories(index, root, services.store, sensors, asked.window, asked.limit)


# ---------------------------------------------------------------- handlers


async def list_devices(request: web.Request) -> web.Response:
    """GET /api/users/{userId}/devices"""
    settings = request.app[SETTINGS]
    page, size = query.page(request, settings.DEFAULT_PAGE_SIZE, settings.MAX_PAGE_SIZE)
    asked = query.history_query(request, settings.DEFAULT_HISTORY_LIMIT, settings.MAX_HISTORY_LIMIT)
    only = query.optional_id(request, query.DEVICE_FILTER)
    db = request.app[SERVICES].db
    user = await owner(request)
    if only is not None:
        devices = [await owned_device(request, user, only)] if page == 1 else []
        total = 1
    else:
        total = await views.count_devices(db, user.tlink_user_id)
        devices = await views.list_devices(db, user.tlink_user_id, size, (page - 1) * size)
    sensors = only_sensors(await views.sensors_of(db, [d.device_id for d in devices]), asked.sensor_ids)
    found, cursors = await history_pages(request, sensors, asked)
    zone = answer_zone(settings)
    items = [
        {**device_part(d, zone),
         "sensors": with_history(sensors[d.device_id], found.get(d.device_id, {}), zone, cursors.get(d.device_id))}
        for d in devices
    ]  # fmt: skip
    pagination = {"page": page, "pageSize": size, "total": total, "pages": math.ceil(total / size)}
    return answer(schemas.DevicesAnswer, {"user": user_part(user), "pagination": pagination, "devices": items})


async def latest(request: web.Request) -> web.Response:
    """GET /api/users/{userId}/devices/{deviceId}/latest"""
    device_id = query.path_id(request, query.DEVICE_ID)
    user = await owner(request)
    device = await owned_device(request, user, device_id)
    sensors = (await views.sensors_of(request.app[SERVICES].db, [device_id]))[device_id]
    zone = answer_zone(request.app[SETTINGS])
    items = [{**sensor_part(s, zone), "latest": latest_part(s, zone)} for s in sensors]
    data = {"user": user_part(user), "device": device_part(device, zone), "sensors": items}
    return answer(schemas.LatestAnswer, data)


async def history(request: web.Request) -> web.StreamResponse:
    """GET /api/users/{userId}/devices/{deviceId}/history (JSON, or CSV with format=csv / Accept: text/csv)"""
    settings = request.app[SETTINGS]
    device_id = query.path_id(request, query.DEVICE_ID)
    asked = query.history_query(request, settings.DEFAULT_HISTORY_LIMIT, settings.MAX_HISTORY_LIMIT)
    form = query.answer_format(request)
    user = await owner(request)
    device = await owned_device(request, user, device_id)
    sensors = await views.sensors_of(request.app[SERVICES].db, [device_id])
    if asked.sensor_ids is not None:
        unknown = sorted(asked.sensor_ids - {s.sensor_id for s in sensors[device_id]})
        if unknown:
            listed = ", ".join(map(str, unknown))
            raise ApiError(404, f"sensorId {listed}: not a sensor of device {device_id}")
    sensors = only_sensors(sensors, asked.sensor_ids)
    found, cursors = await history_pages(request, sensors, asked)
    zone = answer_zone(settings)
    if form == "csv":
        return await csv_answer(request, csv_rows(device_id, sensors[device_id], found.get(device_id, {}), zone))
    items = with_history(sensors[device_id], found.get(device_id, {}), zone, cursors.get(device_id))
    data = {"user": user_part(user), "device": device_part(device, zone), "sensors": items}
    return answer(schemas.HistoryAnswer, data)


# ---------------------------------------------------------------- CSV export

CSV_HEADER = ("deviceId", "sensorId", "sensorName", "unit", "recordedAt", "value", "rawValue", "isAlarm", "isLine")
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
CSV_ROWS_PER_WRITE = 500
CsvRow = tuple[int, int, str | None, str | None, str | None, str | None, str | None, str, str]


def _flag_text(flag: bool | None) -> str:
    return "" if flag is None else "true" if flag else "false"


def csv_rows(
    device_id: int, sensors: list[SensorView], found: dict[int, list[Reading]], zone: tzinfo | None
) -> list[CsvRow]:
    """One row per reading: the sensors in display order, each one's readings newest first (as in JSON)."""
    return [
        (device_id, s.sensor_id, s.sensor_name, s.unit, _time_text(r.recorded_at, zone), r.value, r.raw_value,
         _flag_text(r.is_alarm), _flag_text(r.is_line))
        for s in sensors
        for r in found.get(s.sensor_id, [])
    ]  # fmt: skip


def _csv_chunks(rows: list[CsvRow]) -> Iterator[bytes]:
    """The CSV text (RFC 4180: CRLF, fields quoted when needed), header first, a few hundred rows a chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # None is written as an empty field
    writer.writerow(CSV_HEADER)
    for start in range(0, len(rows), CSV_ROWS_PER_WRITE):
        writer.writerows(rows[start : start + CSV_ROWS_PER_WRITE])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


async def csv_answer(request: web.Request, rows: list[CsvRow]) -> web.StreamResponse:
    """Stream the rows as CSV, with an ETag of the rows (304 when If-None-Match names it), gzipped when accepted."""
    etag = caching.etag_of(b"csv\n", orjson.dumps(rows))
    if caching.matches(request, etag):
        return caching.not_modified(etag, vary=True)
    response = web.StreamResponse(headers={"Content-Type": CSV_CONTENT_TYPE})
    caching.validate(response, etag)
    if request.method == "HEAD":  # the headers only: aiohttp would send what a stream writes, even for HEAD
        response.headers.add("Vary", "Accept-Encoding")
        await response.prepare(request)
        return response
    caching.negotiate_encoding(request, response)
    await response.prepare(request)
    for chunk in _csv_chunks(rows):
        await response.write(chunk)
    await response.write_eof()
    return response


async def events(request: web.Request) -> web.Response:
    """GET /api/users/{userId}/devices/{deviceId}/events"""
    settings = request.app[SETTINGS]
    device_id = query.path_id(request, query.DEVICE_ID)
    page, size = query.page(request, settings.DEFAULT_PAGE_SIZE, settings.MAX_PAGE_SIZE)
    day, type_ = query.day(request), query.event_type(request)
    user = await owner(request)
    device = await owned_device(request, user, device_id)
    # Deep pages scan many lines: keep the event loop free meanwhile.
    items, more = await asyncio.get_running_loop().run_in_executor(
        None,
        partial(
            device_events, settings.SYNC_LOG_DIR, device_id, (page - 1) * size, size, day, type_,
            request.app[SERVICES].store.durable_end(device_id),
        ),
    )  # fmt: skip
    data = {
        "user": user_part(user),
        "device": device_part(device, answer_zone(settings)),
        "pagination": {"page": page, "pageSize": size, "hasMore": more},
        "events": items,
    }
    return answer(schemas.EventsAnswer, data)


async def coverage(request: web.Request) -> web.Response:
    """GET /api/users/{userId}/devices/{deviceId}/coverage"""
    services = request.app[SERVICES]
    settings = services.settings
    device_id = query.path_id(request, query.DEVICE_ID)
    now = utc_now()
    text = query.day(request, query.COVERAGE_DAY)
    day = date.fromisoformat(text) if text else now.astimezone(settings.platform_zone).date()
    user = await owner(request)
    device = await owned_device(request, user, device_id)
    sensors = (await views.sensors_of(services.db, [device_id]))[device_id]
    today = now.strftime("%Y-%m-%d")
    found = await day_coverage(
        services.db, settings.SYNC_LOG_DIR, device_id, sensors, day, settings.BACKFILL_LOOKBACK_DAYS, today
    )
    quota = {"day": today, "limit": settings.BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY}
    zone = answer_zone(settings)
    items = [coverage_part(c, quota, zone) for c in found]
    data = {"user": user_part(user), "device": device_part(device, zone), "day": day.isoformat(), "sensors": items}
    return answer(schemas.CoverageAnswer, data)


def coverage_part(found: SensorCoverage, quota: dict[str, Any], zone: tzinfo | None = None) -> dict[str, Any]:
    """The coverage shape of one sensor."""
    gaps = [
        {"start": _time_text(g.gap.start, zone), "end": _time_text(g.gap.end, zone), "missing": g.gap.missing,
         "askedVendor": g.answered}
        for g in found.gaps
    ]  # fmt: skip
    return {
        "sensorId": found.sensor.sensor_id,
        "sensorName": found.sensor.sensor_name,
        "cadenceSeconds": found.cadence,
        "readings": found.readings,
        "gaps": gaps,
        "openGaps": len(found.open_gaps),
        "missing": sum(g.missing for g in found.open_gaps),
        "coverage": found.ratio,
        "quota": {**quota, "spent": found.calls_today, "refused": found.refused_today},
    }


REFERENCE = {"count": len(DEVICE_APIS), "reference": DEVICE_APIS}
schemas.ReferenceAnswer.model_validate(REFERENCE, strict=True)


async def device_apis(request: web.Request) -> web.Response:
    """GET /api/reference/device-apis (a constant, checked against its model once, at start-up)."""
    return json_response(REFERENCE)
