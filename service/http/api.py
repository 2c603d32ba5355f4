"""Read handlers: a user's devices, latest values, history and raw events, and the vendor reference.

Each handler parses its parameters (service.http.query), asks the read side
(projections.views for the read models, projections.history for history from the log
files, eventlog.backward for raw events) and formats the answer through its model in
service.http.schemas.
"""

from __future__ import annotations

import asyncio
import math
from datetime import date, datetime
from functools import partial
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from eventlog.backward import device_events
from eventlog.events import utc_now
from projections import views
from projections.coverage import SensorCoverage, day_coverage
from projections.history import SqlBlockIndex, Window, histories
from projections.readings import Reading
from projections.views import DeviceView, SensorView, UserView
from service.http import query, schemas
from service.http.keys import SERVICES, SETTINGS
from service.http.middleware.errors import ApiError, json_response
from service.http.reference import DEVICE_APIS


def answer(model: type[BaseModel], data: dict[str, Any], status: int = 200) -> web.Response:
    """Check the answer against its model, strictly (no coercion, no unknown fields), and send it.

    Strict validation leaves nothing to convert, so the checked data is what is sent.
    """
    model.model_validate(data, strict=True)
    return json_response(data, status)


# ---------------------------------------------------------------- answer parts


def _time_text(moment: datetime | None) -> str | None:
    """A platform time as the API writes it: YYYY-MM-DDTHH:MM:SS."""
    return None if moment is None else moment.isoformat(timespec="seconds")


def user_part(user: UserView) -> dict[str, Any]:
    """The user shape."""
    return {"userId": user.tlink_user_id, "parentUserId": user.parent_user_id}


def device_part(device: DeviceView) -> dict[str, Any]:
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
        "lastPushTime": _time_text(device.last_push_time),
    }


def sensor_part(sensor: SensorView) -> dict[str, Any]:
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
        "latestRecordedAt": _time_text(sensor.latest_recorded_at),
    }


def reading_part(reading: Reading) -> dict[str, Any]:
    """The reading shape."""
    return {
        "recordedAt": _time_text(reading.recorded_at),
        "sensorTimestamp": reading.sensor_timestamp,
        "value": reading.value,
        "rawValue": reading.raw_value,
        "isAlarm": reading.is_alarm,
        "isLine": reading.is_line,
    }


def latest_part(sensor: SensorView) -> dict[str, Any] | None:
    """A sensor's latest reading from the read model, or None if it never reported."""
    if sensor.latest_recorded_at is None:
        return None
    s = sensor
    return reading_part(
        Reading(s.sensor_id, sensor.latest_recorded_at, s.latest_sensor_timestamp, s.latest_value, s.latest_raw_value,
                s.is_alarm, s.is_line)
    )  # fmt: skip


def with_history(sensors: list[SensorView], histories: dict[int, list[Reading]]) -> list[dict[str, Any]]:
    """Sensor summaries each with its history list."""
    return [{**sensor_part(s), "history": [reading_part(r) for r in histories.get(s.sensor_id, [])]} for s in sensors]


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


async def sensor_histories(
    request: web.Request, sensors: dict[int, list[SensorView]], window: Window, limit: int
) -> dict[int, dict[int, list[Reading]]]:
    """Per device, the newest `limit` readings in the window of each of its sensors (projections.history)."""
    services = request.app[SERVICES]
    return await histories(
        SqlBlockIndex(services.db), services.settings.SYNC_LOG_DIR, services.store, sensors, window, limit
    )


# ---------------------------------------------------------------- handlers


async def list_devices(request: web.Request) -> web.Response:
    """GET /api/users/{userId}/devices"""
    settings = request.app[SETTINGS]
    page, size = query.page(request, settings.DEFAULT_PAGE_SIZE, settings.MAX_PAGE_SIZE)
    window = query.window(request)
    limit = query.history_limit(request, settings.DEFAULT_HISTORY_LIMIT, settings.MAX_HISTORY_LIMIT)
    only = query.optional_id(request, query.DEVICE_FILTER)
    db = request.app[SERVICES].db
    user = await owner(request)
    if only is not None:
        devices = [await owned_device(request, user, only)] if page == 1 else []
        total = 1
    else:
        total = await views.count_devices(db, user.tlink_user_id)
        devices = await views.list_devices(db, user.tlink_user_id, size, (page - 1) * size)
    sensors = await views.sensors_of(db, [d.device_id for d in devices])
    found = await sensor_histories(request, sensors, window, limit)
    items = [
        {**device_part(d), "sensors": with_history(sensors[d.device_id], found.get(d.device_id, {}))} for d in devices
    ]
    pagination = {"page": page, "pageSize": size, "total": total, "pages": math.ceil(total / size)}
    return answer(schemas.DevicesAnswer, {"user": user_part(user), "pagination": pagination, "devices": items})


async def latest(request: web.Request) -> web.Response:
    """GET /api/users/{userId}/devices/{deviceId}/latest"""
    device_id = query.path_id(request, query.DEVICE_ID)
    user = await owner(request)
    device = await owned_device(request, user, device_id)
    sensors = (await views.sensors_of(request.app[SERVICES].db, [device_id]))[device_id]
    items = [{**sensor_part(s), "latest": latest_part(s)} for s in sensors]
    return answer(schemas.LatestAnswer, {"user": user_part(user), "device": device_part(device), "sensors": items})


async def history(request: web.Request) -> web.Response:
    """GET /api/users/{userId}/devices/{deviceId}/history"""
    settings = request.app[SETTINGS]
    device_id = query.path_id(request, query.DEVICE_ID)
    window = query.window(request)
    limit = query.history_limit(request, settings.DEFAULT_HISTORY_LIMIT, settings.MAX_HISTORY_LIMIT)
    user = await owner(request)
    device = await owned_device(request, user, device_id)
    sensors = await views.sensors_of(request.app[SERVICES].db, [device_id])
    found = (await sensor_histories(request, sensors, window, limit)).get(device_id, {})
    data = {"user": user_part(user), "device": device_part(device), "sensors": with_history(sensors[device_id], found)}
    return answer(schemas.HistoryAnswer, data)


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
        "device": device_part(device),
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
    items = [coverage_part(c, quota) for c in found]
    data = {"user": user_part(user), "device": device_part(device), "day": day.isoformat(), "sensors": items}
    return answer(schemas.CoverageAnswer, data)


def coverage_part(found: SensorCoverage, quota: dict[str, Any]) -> dict[str, Any]:
    """The coverage shape of one sensor."""
    gaps = [
        {"start": _time_text(g.gap.start), "end": _time_text(g.gap.end), "missing": g.gap.missing,
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
