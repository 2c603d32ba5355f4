"""The TLINK REST endpoints this service relates to (vendor documentation, restated)."""

from __future__ import annotations

from typing import Any

# The vendor's "GET" routes read their parameters from a JSON body (see tlink-protocol.md §2).
DEVICE_APIS: list[dict[str, Any]] = [
    dict(
        endpoint="/api/device/getDeviceSensorDatas",
        method="GET",
        summary="Devices of a user with their sensors and current values, paged; what the background sync walks",
        keyFields=["userId", "currPage", "pageSize", "deviceId", "groupId", "isDelete", "isLine", "isAlarms"],
    ),
    dict(
        endpoint="/api/device/getDevices",
        method="GET",
        summary="Devices of a user, paged",
        keyFields=["userId", "currPage", "pageSize"],
    ),
    dict(
        endpoint="/api/device/getSingleDeviceDatas",
        method="GET",
        summary="One device with its sensors and current values",
        keyFields=["userId", "deviceId"],
    ),
    dict(
        endpoint="/api/device/getSingleSensorDatas",
        method="GET",
        summary="One sensor's current value",
        keyFields=["userId", "sensorId"],
    ),
    dict(
        endpoint="/api/device/getSensorHistroy",
        method="GET",
        summary="A sensor's history (vendor spelling); answers dataList of value, recordTime, status",
        keyFields=["userId", "sensorId", "startTime", "endTime", "currPage", "pageSize"],
    ),
    dict(
        endpoint="/api/device/sendDataPoint",
        method="POST",
        summary="Upload values for sensors",
        keyFields=["sensorList[].sensorId", "sensorList[].value", "sensorList[].timestamp"],
    ),
    dict(
        endpoint="/api/device/switcherController",
        method="POST",
        summary="Switch a switch-type sensor of a device",
        keyFields=["deviceId", "sensorId", "value"],
    ),
    dict(
        endpoint="/api/device/deviceWrite",
        method="POST",
        summary="Write data down to a device",
        keyFields=["deviceId"],
    ),
]
