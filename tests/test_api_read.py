"""End to end over HTTP on both backends: device lists, latest values, history and raw events.

State is set up through the real webhook (and the ingestor's sync path for device
metadata); every answer is checked against the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import copy

import orjson
import pytest

from eventlog.files import device_days, log_path
from projections.history import SqlBlockIndex, Window
from service.http.keys import SERVICES
from tests.conftest import fixture_bytes
from tests.test_api_openapi import api_get

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
USER, DEVICE = 385, 2864
WEBHOOK = "/api/webhooks/tlink"


def push_body(time: str, values: dict[int, str], device_id: int = DEVICE, user_id: int = USER) -> dict:
    body = copy.deepcopy(SAMPLE)
    body.update(deviceId=device_id, deviceUserid=user_id, time=time)
    body["sensorsDates"] = [
        {"times": time[11:], "sensorsId": s, "isAlarm": "0", "sensorsTypeId": 1, "isLine": 1, "reVal": v,
         "value": v}
        for s, v in values.items()
    ]
    return body


async def push(client, body: dict) -> dict:
    resp = await client.post(WEBHOOK, data=orjson.dumps(body))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def sync_device(client, device_id: int, sensors: dict[int, str | None], user_id: int = USER) -> None:
    device = {
        "id": device_id, "deviceName": f"Tank {device_id}", "deviceNo": f"NO{device_id}", "userId": user_id,
        "groupId": 7, "isLine": 1, "lat": "13.75", "lng": "100.50",
        "sensorsList": [
            {"id": s, "deviceId": device_id, "sensorName": f"Sensor {s}", "sensorTypeId": 1, "unit": "mm",
             "value": "synced", "isAlarms": 0, "isLine": 1, "ordernum": i, "updateDate": at}
            for i, (s, at) in enumerate(sensors.items())
        ],
    }  # fmt: skip
    await client.server.app[SERVICES].ingestor.sync_device(user_id, device)


def values(sensor: dict) -> list[tuple[str, str]]:
    return [(r["recordedAt"], r["value"]) for r in sensor["history"]]


async def test_a_push_is_in_latest_as_soon_as_it_is_answered(app_client):
    client = await app_client()
    answer = await push(client, SAMPLE)
    assert answer["projected"] is True
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/latest")
    assert body["user"] == {"userId": USER, "parentUserId": "217"}
    assert body["device"]["deviceId"] == DEVICE and body["device"]["lastPushTime"] == "2019-05-10T14:16:21"
    latest = {s["sensorId"]: s["latest"] for s in body["sensors"]}
    assert latest[11923] == {"recordedAt": "2019-05-10T14:16:21", "sensorTimestamp": "14:16:21", "value": "28.6",
                             "rawValue": "2.7434", "isAlarm": False, "isLine": True}  # fmt: skip
    await push(client, push_body("2019-05-10 14:17:21", {11923: "30.0"}))
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/latest")
    assert {s["sensorId"]: s["latestValue"] for s in body["sensors"]}[11923] == "30.0"


async def test_latest_means_the_newest_reading_time(app_client):
    client = await app_client()
    await push(client, push_body("2026-05-01 10:00:00", {1: "new"}))
    await push(client, push_body("2026-05-01 09:00:00", {1: "old"}))  # a late delivery
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/latest")
    assert body["sensors"][0]["latest"]["value"] == "new"
    assert body["sensors"][0]["latestRecordedAt"] == "2026-05-01T10:00:00"


async def test_sensors_without_readings_have_no_latest(app_client):
    client = await app_client()
    await sync_device(client, DEVICE, {1: None})
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/latest")
    assert body["sensors"][0]["latest"] is None and body["sensors"][0]["sensorName"] == "Sensor 1"
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/history")
    assert body["sensors"][0]["history"] == []


async def test_devices_lists_each_device_with_sensors_and_history(app_client):
    client = await app_client(MAX_PAGE_SIZE=2)
    for device_id in (3001, 3002, 3003):
        await sync_device(client, device_id, {device_id * 10 + 1: None, device_id * 10 + 2: None})
        for n in range(3):
            readings = {device_id * 10 + 1: f"a{n}", device_id * 10 + 2: f"b{n}"}
            await push(client, push_body(f"2026-05-01 10:0{n}:00", readings, device_id))
    await push(client, push_body("2026-05-01 10:00:00", {1: "x"}, device_id=4000, user_id=999))  # another user's
    body = await api_get(client, f"/api/users/{USER}/devices?pageSize=500&historyLimit=2")
    assert body["pagination"] == {"page": 1, "pageSize": 2, "total": 3, "pages": 2}  # pageSize capped
    first = body["devices"][0]
    assert (first["deviceId"], first["deviceName"], first["deviceNo"], first["groupId"]) == (3001, "Tank 3001",
                                                                                            "NO3001", 7)  # fmt: skip
    assert (first["lat"], first["lng"], first["lastFlag"], first["userId"]) == ("13.75", "100.50", "00", USER)
    assert [s["sensorId"] for s in first["sensors"]] == [30011, 30012]
    assert first["sensors"][0]["sensorName"] == "Sensor 30011" and first["sensors"][0]["unit"] == "mm"
    assert values(first["sensors"][0]) == [("2026-05-01T10:02:00", "a2"), ("2026-05-01T10:01:00", "a1")]
    body = await api_get(client, f"/api/users/{USER}/devices?page=2&pageSize=2")
    assert [d["deviceId"] for d in body["devices"]] == [3003]
    body = await api_get(client, f"/api/users/{USER}/devices?page=3&pageSize=2")
    assert body["devices"] == [] and body["pagination"]["total"] == 3


async def test_devices_filters_by_device_and_window(app_client):
    client = await app_client()
    for device_id in (3001, 3002):
        for n in range(4):
            await push(client, push_body(f"2026-05-01 10:0{n}:00", {device_id: f"v{n}"}, device_id))
    url = f"/api/users/{USER}/devices?deviceId=3002&startTime=2026-05-01 10:01:00&endTime=2026-05-01T10:02:00"
    body = await api_get(client, url)
    assert body["pagination"]["total"] == 1 and [d["deviceId"] for d in body["devices"]] == [3002]
    assert values(body["devices"][0]["sensors"][0]) == [("2026-05-01T10:02:00", "v2"), ("2026-05-01T10:01:00", "v1")]
    await api_get(client, f"/api/users/{USER}/devices?deviceId=4444", status=404)


async def test_history_window_limit_order_and_late_deliveries(app_client):
    client = await app_client()
    for n in range(6):
        await push(client, push_body(f"2026-05-01 10:0{n}:00", {1: f"v{n}", 2: f"w{n}"}))
    await push(client, push_body("2026-05-01 10:02:30", {1: "late"}))
    url = f"/api/users/{USER}/devices/{DEVICE}/history"
    body = await api_get(client, url + "?startTime=2026-05-01 10:01:00&endTime=2026-05-01 10:03:00&historyLimit=3")
    found = {s["sensorId"]: values(s) for s in body["sensors"]}
    assert found[1] == [("2026-05-01T10:03:00", "v3"), ("2026-05-01T10:02:30", "late"), ("2026-05-01T10:02:00", "v2")]
    assert found[2] == [("2026-05-01T10:03:00", "w3"), ("2026-05-01T10:02:00", "w2"), ("2026-05-01T10:01:00", "w1")]
    body = await api_get(client, url + "?historyLimit=0")
    assert all(s["history"] == [] for s in body["sensors"])


async def test_a_reading_pushed_and_synced_is_in_history_once(app_client):
    client = await app_client()
    await push(client, push_body("2026-05-01 10:00:00", {1: "5.0"}))
    await sync_device(client, DEVICE, {1: "2026-05-01 10:00:00"})
    await sync_device(client, DEVICE, {1: "2026-05-01 10:00:00"})
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/history")
    [sensor] = body["sensors"]
    assert sensor["history"] == [{"recordedAt": "2026-05-01T10:00:00", "sensorTimestamp": "10:00:00", "value": "5.0",
                                  "rawValue": "5.0", "isAlarm": False, "isLine": True}]  # fmt: skip


async def test_history_comes_from_the_log_files_not_the_readings_table(app_client):
    client = await app_client()
    for n in range(3):
        await push(client, push_body(f"2026-05-01 10:0{n}:00", {1: f"v{n}"}))
    async with client.server.app[SERVICES].db.transaction() as cur:
        await cur.execute("DELETE FROM sensor_readings")
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/history")
    assert [v for _, v in values(body["sensors"][0])] == ["v2", "v1", "v0"]


@pytest.mark.parametrize("suffix", ["latest", "history", "events"])
async def test_unknown_users_and_other_users_devices_are_404(app_client, suffix):
    client = await app_client()
    await push(client, SAMPLE)
    await push(client, push_body("2026-05-01 10:00:00", {1: "x"}, device_id=4000, user_id=999))
    body = await api_get(client, f"/api/users/12345/devices/{DEVICE}/{suffix}", status=404)
    assert "12345" in body["error"]
    body = await api_get(client, f"/api/users/{USER}/devices/4000/{suffix}", status=404)
    assert "4000" in body["error"]
    await api_get(client, f"/api/users/{USER}/devices/5555/{suffix}", status=404)
    await api_get(client, "/api/users/12345/devices", status=404)


BAD = [
    ("/api/users/abc/devices", "userId"),
    ("/api/users/0/devices", "userId"),
    (f"/api/users/{USER}/devices/x1/latest", "deviceId"),
    (f"/api/users/{USER}/devices?page=x", "page"),
    (f"/api/users/{USER}/devices?page=0", "page"),
    (f"/api/users/{USER}/devices?page=", "page"),
    (f"/api/users/{USER}/devices?pageSize=-1", "pageSize"),
    (f"/api/users/{USER}/devices?pageSize=1.5", "pageSize"),
    (f"/api/users/{USER}/devices?historyLimit=-1", "historyLimit"),
    (f"/api/users/{USER}/devices?historyLimit=ten", "historyLimit"),
    (f"/api/users/{USER}/devices?historyLimit=1001", "historyLimit"),
    (f"/api/users/{USER}/devices?deviceId=abc", "deviceId"),
    (f"/api/users/{USER}/devices?startTime=yesterday", "startTime"),
    (f"/api/users/{USER}/devices?endTime=2026-13-01 00:00:00", "endTime"),
    (f"/api/users/{USER}/devices/{DEVICE}/history?startTime=2026-05-01", "startTime"),
    (f"/api/users/{USER}/devices/{DEVICE}/history?startTime=2026-05-02 00:00:00&endTime=2026-05-01 00:00:00",
     "startTime"),
    (f"/api/users/{USER}/devices/{DEVICE}/history?historyLimit=99999999999999999999999", "historyLimit"),
    (f"/api/users/{USER}/devices/{DEVICE}/events?day=2026-5-1", "day"),
    (f"/api/users/{USER}/devices/{DEVICE}/events?day=2026-02-30", "day"),
    (f"/api/users/{USER}/devices/{DEVICE}/events?type=pushes", "type"),
    (f"/api/users/{USER}/devices/{DEVICE}/events?page=-2", "page"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "name"), BAD)
async def test_a_malformed_parameter_is_a_400_naming_it(app_client, url, name):
    client = await app_client()
    await push(client, SAMPLE)
    body = await api_get(client, url, status=400)
    assert name in body["error"]


async def test_history_limit_maximum_is_a_setting(app_client):
    client = await app_client(MAX_HISTORY_LIMIT=5, DEFAULT_HISTORY_LIMIT=2)
    for n in range(4):
        await push(client, push_body(f"2026-05-01 10:0{n}:00", {1: f"v{n}"}))
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/history?historyLimit=6", status=400)
    assert "historyLimit" in body["error"] and "5" in body["error"]
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/history")
    assert len(body["sensors"][0]["history"]) == 2
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/history?historyLimit=5")
    assert len(body["sensors"][0]["history"]) == 4


async def test_events_are_the_lines_as_they_stand_newest_first(app_client, log_root):
    client = await app_client()
    stored = [await push(client, push_body(f"2026-05-01 10:0{n}:00", {1: f"v{n}"})) for n in range(3)]
    await sync_device(client, DEVICE, {1: None})
    [day] = device_days(log_root, DEVICE)
    lines = log_path(log_root, DEVICE, day).read_bytes().splitlines()
    url = f"/api/users/{USER}/devices/{DEVICE}/events"
    body = await api_get(client, url + "?pageSize=2")
    assert body["pagination"] == {"page": 1, "pageSize": 2, "hasMore": True}
    assert [(e["type"], e["line"], e["file"]) for e in body["events"]] == [
        ("sync", 4, f"device{DEVICE}-{day}.log"), ("push", 3, f"device{DEVICE}-{day}.log")
    ]  # fmt: skip
    event = dict(body["events"][1])
    del event["file"], event["line"]
    assert event == orjson.loads(lines[2]) and event["id"] == stored[2]["eventId"]
    body = await api_get(client, url + "?pageSize=2&page=2")
    assert [e["line"] for e in body["events"]] == [2, 1] and body["pagination"]["hasMore"] is False
    body = await api_get(client, url + "?type=push&pageSize=2&page=2")
    assert [e["line"] for e in body["events"]] == [1]
    body = await api_get(client, url + f"?day={day}&type=sync")
    assert [e["line"] for e in body["events"]] == [4]
    body = await api_get(client, url + "?day=2001-01-01")
    assert body["events"] == []


async def test_reference_lists_the_vendor_endpoints(app_client):
    client = await app_client()
    body = await api_get(client, "/api/reference/device-apis")
    endpoints = {r["endpoint"]: r for r in body["reference"]}
    assert body["count"] == len(body["reference"]) == 8
    assert endpoints["/api/device/getSensorHistroy"]["keyFields"][:2] == ["userId", "sensorId"]
    assert "/api/device/getDeviceSensorDatas" in endpoints and "/api/device/switcherController" in endpoints


async def test_history_walks_many_blocks_in_order(app_client):
    """Enough lines for a dozen index blocks, a sparse sensor, and blocks whose max reading time ties."""
    client = await app_client()
    for chunk in range(10):
        bodies = []
        for n in range(chunk * 64, chunk * 64 + 64):
            readings = {1: f"v{n}"} | ({2: f"s{n}"} if n % 97 == 0 else {})
            bodies.append(push_body(f"2026-05-02 {n // 360:02d}:{n // 6 % 60:02d}:{n % 6 * 10:02d}", readings))
        await asyncio.gather(*(push(client, b) for b in bodies))
    for _ in range(130):  # the vendor reports a sensor's last reading again and again
        await sync_device(client, DEVICE, {3: "2026-05-01 00:00:00"})
    url = f"/api/users/{USER}/devices/{DEVICE}/history"
    body = await api_get(client, url + "?historyLimit=5")
    found = {s["sensorId"]: [r["value"] for r in s["history"]] for s in body["sensors"]}
    assert found[1] == ["v639", "v638", "v637", "v636", "v635"]
    assert found[2] == ["s582", "s485", "s388", "s291", "s194"]
    assert found[3] == ["synced"]
    body = await api_get(client, url + "?historyLimit=1000&startTime=2026-05-02 00:10:00&endTime=2026-05-02 00:20:00")
    found = {s["sensorId"]: [r["value"] for r in s["history"]] for s in body["sensors"]}
    assert found[1] == [f"v{n}" for n in range(120, 59, -1)] and found[2] == ["s97"] and found[3] == []
    # The index pages the same blocks one at a time as all at once, ties on max reading time included.
    index = SqlBlockIndex(client.server.app[SERVICES].db)
    everything = await index.before(DEVICE, Window(), None, None, 1000)
    paged, after = [], None
    while page := await index.before(DEVICE, Window(), None, after, 1):
        paged += page
        after = page[-1]
    assert paged == everything and len(everything) >= 12
    maxima = [b.max_recorded_at for b in everything]
    assert maxima == sorted(maxima, reverse=True) and len(set(maxima)) < len(maxima)
