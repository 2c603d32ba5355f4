"""A sensor is (deviceId, sensorId): devices that report the same sensor ids each keep their own."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from projections.db import connect
from projections.replay import replay_logs
from tests.conftest import fixture_bytes

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
DEVICES = (8001, 8002, 8003)
SENSORS = (501, 502)


def push(device_id: int, user_id: int, n: int) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    body["deviceId"], body["deviceUserid"], body["time"] = device_id, user_id, f"2026-05-01 10:{n:02d}:00"
    body["sensorsDates"] = [
        {"sensorsId": s, "times": f"10:{n:02d}:00", "value": f"{device_id}-{s}-{n}", "reVal": str(n), "isAlarm": "0",
         "isLine": 1, "sensorsTypeId": 1, "unit": "mm"}
        for s in SENSORS
    ]  # fmt: skip
    return body


async def device_list(client: Any, user_id: int) -> dict[int, dict[int, list[str]]]:
    """deviceId -> sensorId -> history values, as GET /devices answers."""
    response = await client.get(f"/api/users/{user_id}/devices?historyLimit=50")
    assert response.status == 200, await response.text()
    return {
        d["deviceId"]: {s["sensorId"]: [h["value"] for h in s["history"]] for s in d["sensors"]}
        for d in (await response.json())["devices"]
    }


async def test_each_device_keeps_its_own_sensors_and_readings(app_client, database_url, log_root):
    client = await app_client()
    for n in range(10):
        for device_id in DEVICES:
            assert (await client.post("/api/webhooks/tlink", json=push(device_id, 385, n))).status == 200
    other_user = await client.post("/api/webhooks/tlink", json=push(9001, 386, 0))  # the same sensor ids again
    assert other_user.status == 200

    seen = await device_list(client, 385)
    assert sorted(seen) == list(DEVICES)
    for device_id in DEVICES:
        assert sorted(seen[device_id]) == list(SENSORS)
        for sensor_id in SENSORS:  # all ten readings, newest first, each its own device's
            assert seen[device_id][sensor_id] == [f"{device_id}-{sensor_id}-{n}" for n in reversed(range(10))]
    assert await device_list(client, 386) == {9001: {s: [f"9001-{s}-0"] for s in SENSORS}}
    latest = await (await client.get("/api/users/385/devices/8002/latest")).json()
    assert [(s["sensorId"], s["latestValue"]) for s in latest["sensors"]] == [(501, "8002-501-9"), (502, "8002-502-9")]
    await client.close()

    db = await connect(database_url)
    try:
        before = await db.fetchall("SELECT device_id, sensor_id, latest_value FROM sensors ORDER BY 1, 2")
        count = await db.fetchall("SELECT COUNT(*) FROM sensor_readings")
        workers = 3 if database_url.startswith("mysql") else 1
        await replay_logs(db, log_root, url=database_url, workers=workers)
        assert await db.fetchall("SELECT device_id, sensor_id, latest_value FROM sensors ORDER BY 1, 2") == before
        assert await db.fetchall("SELECT COUNT(*) FROM sensor_readings") == count
        assert int(count[0][0]) == 3 * 10 * 2 + 2
    finally:
        await db.close()

