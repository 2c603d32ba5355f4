"""What a frontend needs of the read API, end to end on both backends: the sensorId filter, paging
backwards with before/next, gzip and ETag/304, TLINK_TIMEZONE in answers, and the CSV export.

State is set up through the real webhook; JSON answers are checked against the OpenAPI document.
"""

from __future__ import annotations

import csv
import gzip
import io
from typing import Any

import orjson
import pytest

from tests.test_api_openapi import api_get, document
from tests.test_api_read import DEVICE, USER, WEBHOOK, push, push_body, sync_device

HISTORY = f"/api/users/{USER}/devices/{DEVICE}/history"
DEVICES = f"/api/users/{USER}/devices"
CSV_HEADER = ["deviceId", "sensorId", "sensorName", "unit", "recordedAt", "value", "rawValue", "isAlarm", "isLine"]


def clock(n: int) -> str:
    """The n-th second after 2026-05-01 10:00:00, as a push `time`."""
    return f"2026-05-01 10:{n // 60:02d}:{n % 60:02d}"


def by_sensor(body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {s["sensorId"]: s for s in body["sensors"]}


def times(sensor: dict[str, Any]) -> list[str]:
    return [r["recordedAt"] for r in sensor["history"]]


# ---------------------------------------------------------------- sensorId


async def test_sensor_filter_one_and_several_on_history_and_devices(app_client):
    client = await app_client()
    for n in range(3):
        await push(client, push_body(clock(n), {1: f"a{n}", 2: f"b{n}", 3: f"c{n}"}))
    await push(client, push_body(clock(0), {7: "other"}, device_id=DEVICE + 1))

    body = await api_get(client, f"{HISTORY}?sensorId=2")
    assert [s["sensorId"] for s in body["sensors"]] == [2]
    assert [r["value"] for r in body["sensors"][0]["history"]] == ["b2", "b1", "b0"]
    body = await api_get(client, f"{HISTORY}?sensorId=3&sensorId=1&sensorId=3")
    assert [s["sensorId"] for s in body["sensors"]] == [1, 3]  # display order, each once

    # /devices: each device keeps the sensors asked for that are its own; the others show none
    body = await api_get(client, f"{DEVICES}?sensorId=2&sensorId=7")
    assert {d["deviceId"]: [s["sensorId"] for s in d["sensors"]] for d in body["devices"]} == {
        DEVICE: [2], DEVICE + 1: [7],
    }  # fmt: skip
    body = await api_get(client, f"{DEVICES}?sensorId=99")
    assert [d["sensors"] for d in body["devices"]] == [[], []]


async def test_sensor_filter_refuses_bad_ids_and_other_devices_sensors(app_client):
    client = await app_client()
    await push(client, push_body(clock(0), {1: "a", 2: "b"}))
    await push(client, push_body(clock(0), {7: "other"}, device_id=DEVICE + 1))
    for query in ["sensorId=x", "sensorId=", "sensorId=0", "sensorId=1&sensorId=x", "sensorId=1&sensorId=-3",
                  "sensorId=%EF%BC%91", "sensorId=9223372036854775808"]:  # fmt: skip
        for url in (HISTORY, DEVICES):
            body = await api_get(client, f"{url}?{query}", status=400)
            assert body["error"].startswith("sensorId"), (query, body)
    body = await api_get(client, f"{HISTORY}?sensorId=1&sensorId=7&sensorId=8", status=404)
    assert body["error"] == f"sensorId 7, 8: not a sensor of device {DEVICE}"


# ---------------------------------------------------------------- before / next


async def page_through(client, url: str, sensor_id: int | None = None) -> tuple[list[str], int]:
    """Follow `next` from the first page until it is null; every page's readings of one sensor."""
    seen: list[str] = []
    pages, cursor = 0, None
    while True:
        body = await api_get(client, url + (f"&before={cursor}" if cursor else ""))
        pages += 1
        [sensor] = [s for s in body["sensors"] if sensor_id is None or s["sensorId"] == sensor_id]
        seen += times(sensor)
        cursor = sensor["next"]
        if cursor is None:
            return seen, pages
        assert cursor == sensor["history"][-1]["recordedAt"]
        assert pages <= 1000


async def test_paging_backwards_gives_the_whole_history_exactly_once(app_client):
    client = await app_client()
    for n in range(150):  # more than two index blocks of 64 lines; sensor 2 reports every third push
        await push(client, push_body(clock(n), {1: f"a{n}", **({2: f"b{n}"} if n % 3 == 0 else {})}))
    await push(client, push_body(clock(200), {1: "a200"}))
    await push(client, push_body(clock(31), {1: "a31-again"}))  # a duplicate reading: shown once
    await push(client, push_body(clock(160), {1: "late"}))  # a late delivery, logged last
    await sync_device(client, DEVICE, {1: clock(120), 2: clock(120)})

    full = await api_get(client, f"{HISTORY}?historyLimit=1000")
    whole = {s: times(sensor) for s, sensor in by_sensor(full).items()}
    assert len(whole[1]) == 152 and len(whole[2]) == 50
    assert all(sensor["next"] is None for sensor in full["sensors"])

    for sensor_id in (1, 2):
        for limit in (1, 7, 50):
            seen, pages = await page_through(client, f"{HISTORY}?sensorId={sensor_id}&historyLimit={limit}", sensor_id)
            assert seen == whole[sensor_id], (sensor_id, limit)
            assert pages == -(-len(whole[sensor_id]) // limit), (sensor_id, limit)

    # without sensorId every sensor has its own cursor; a window bounds the walk on both ends
    window = f"startTime={clock(10)}&endTime={clock(100)}"
    body = await api_get(client, f"{HISTORY}?{window}&historyLimit=10")
    assert by_sensor(body)[1]["next"] == "2026-05-01T10:01:31" and by_sensor(body)[2]["next"] == "2026-05-01T10:01:12"
    for sensor_id in (1, 2):
        seen, _ = await page_through(client, f"{HISTORY}?{window}&historyLimit=10", sensor_id)
        inside = [t for t in whole[sensor_id] if "2026-05-01T10:00:10" <= t <= "2026-05-01T10:01:40"]
        assert seen == inside and inside
    # /devices pages the same way
    cursor, seen = None, []
    while True:
        body = await api_get(client, f"{DEVICES}?historyLimit=20" + (f"&before={cursor}" if cursor else ""))
        sensor = by_sensor(body["devices"][0])[1]
        seen += times(sensor)
        if (cursor := sensor["next"]) is None:
            break
    assert seen == whole[1]


async def test_before_is_exclusive_and_checked(app_client):
    client = await app_client()
    for n in range(5):
        await push(client, push_body(clock(n), {1: f"a{n}"}))
    body = await api_get(client, f"{HISTORY}?before=2026-05-01T10:00:03")
    assert times(body["sensors"][0]) == ["2026-05-01T10:00:02", "2026-05-01T10:00:01", "2026-05-01T10:00:00"]
    body = await api_get(client, f"{HISTORY}?before=2026-05-01 10:00:03&endTime=2026-05-01 10:00:01&historyLimit=1")
    assert times(body["sensors"][0]) == ["2026-05-01T10:00:01"] and body["sensors"][0]["next"] == "2026-05-01T10:00:01"
    body = await api_get(client, f"{HISTORY}?before=1000-01-01 00:00:00")
    assert body["sensors"][0]["history"] == [] and body["sensors"][0]["next"] is None
    body = await api_get(client, f"{HISTORY}?historyLimit=0")
    assert body["sensors"][0]["next"] is None
    for query in ["before=yesterday", "before=", "before=2026-05-01T10:00:03%2B08:00", "before=2026-02-30 00:00:00",
                  "startTime=2026-05-01 10:00:03&before=2026-05-01 10:00:03"]:  # fmt: skip
        for url in (HISTORY, DEVICES):
            body = await api_get(client, f"{url}?{query}", status=400)
            assert body["error"].startswith("before"), (query, body)


# ---------------------------------------------------------------- gzip, ETag


async def many_readings(client, count: int = 40) -> None:
    for n in range(count):
        await push(client, push_body(clock(n), {1: f"value {n}", 2: f"other {n}"}))


async def test_answers_are_gzipped_when_the_client_accepts_gzip(app_client):
    client = await app_client()
    await many_readings(client)
    for url in (HISTORY, DEVICES, f"{HISTORY}?format=csv", "/api/openapi.json"):
        plain = await client.get(url, headers={"Accept-Encoding": "identity"})
        assert plain.status == 200 and "Content-Encoding" not in plain.headers
        raw = await plain.read()
        assert len(raw) > 1024
        for accept in ("gzip", "gzip, deflate, br", "br;q=1, gzip;q=0.5", "*"):
            packed = await client.get(url, headers={"Accept-Encoding": accept}, auto_decompress=False)
            assert packed.status == 200 and packed.headers["Content-Encoding"] == "gzip", (url, accept)
            assert "Accept-Encoding" in packed.headers.getall("Vary")
            assert gzip.decompress(await packed.read()) == raw
            assert packed.headers["ETag"] == plain.headers["ETag"]
        refused = await client.get(url, headers={"Accept-Encoding": "gzip;q=0, deflate"}, auto_decompress=False)
        assert "Content-Encoding" not in refused.headers and await refused.read() == raw
    # small answers are sent as they are; errors, the webhook and /metrics get no validators
    small = await client.get("/api/health", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert "Content-Encoding" not in small.headers and "ETag" in small.headers
    error = await client.get(f"{HISTORY}?page=x&historyLimit=x", headers={"Accept-Encoding": "gzip"})
    assert error.status == 400 and "ETag" not in error.headers
    metrics = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})  # compressed by prometheus_client
    assert metrics.status == 200 and "ETag" not in metrics.headers
    hook = await client.post(WEBHOOK, data=orjson.dumps(push_body(clock(500), {1: "x"})),
                             headers={"Accept-Encoding": "gzip"}, auto_decompress=False)  # fmt: skip
    assert hook.status == 200 and "ETag" not in hook.headers and "Content-Encoding" not in hook.headers


@pytest.mark.parametrize("url", [HISTORY, DEVICES, f"{HISTORY}?format=csv", HISTORY.replace("history", "latest")])
async def test_etag_and_if_none_match(app_client, url):
    client = await app_client(CORS_ALLOWED_ORIGINS=["https://app.example"])
    await many_readings(client, 5)
    first = await client.get(url)
    etag = first.headers["ETag"]
    assert first.status == 200 and etag.startswith('W/"') and first.headers["Cache-Control"] == "no-cache"
    again = await client.get(url)
    assert again.headers["ETag"] == etag  # the same answer, the same tag
    origin = {"Origin": "https://app.example"}
    for header in (etag, etag[2:], f'"nope", {etag}', "*"):
        same = await client.get(url, headers={"If-None-Match": header, **origin})
        assert same.status == 304, header
        assert await same.read() == b"" and same.headers["ETag"] == etag
        assert same.headers["Access-Control-Allow-Origin"] == "https://app.example"  # CORS still applies
        assert "ETag" in same.headers["Access-Control-Expose-Headers"]
    preflight = await client.options(url, headers={**origin, "Access-Control-Request-Method": "GET",
                                                   "Access-Control-Request-Headers": "if-none-match"})  # fmt: skip
    assert preflight.status == 204 and "If-None-Match" in preflight.headers["Access-Control-Allow-Headers"]
    head = await client.head(url, headers={"If-None-Match": etag})
    assert head.status == 304
    other = await client.get(url, headers={"If-None-Match": '"nope"'})
    assert other.status == 200 and await other.read() == await first.read()

    await push(client, push_body(clock(300), {1: "newer"}))
    changed = await client.get(url, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag


def test_the_document_states_etag_304_and_csv():
    history = document()["paths"]["/api/users/{userId}/devices/{deviceId}/history"]["get"]
    assert set(history["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert "ETag" in history["responses"]["200"]["headers"] and "304" in history["responses"]
    names = {p["name"] for p in history["parameters"]}
    assert {"sensorId", "before", "format"} <= names
    devices = document()["paths"]["/api/users/{userId}/devices"]["get"]
    assert {"sensorId", "before"} <= {p["name"] for p in devices["parameters"]}
    assert "format" not in {p["name"] for p in devices["parameters"]}
    webhook = document()["paths"]["/api/webhooks/tlink"]["post"]
    assert "304" not in webhook["responses"]


# ---------------------------------------------------------------- TLINK_TIMEZONE


async def zone_answers(client) -> dict[str, Any]:
    await push(client, push_body("2026-05-01 08:00:00", {1: "a"}))
    await push(client, push_body("2026-05-01 08:00:05", {1: "b"}))
    return {
        "history": await api_get(client, f"{HISTORY}?historyLimit=1"),
        "devices": await api_get(client, f"{DEVICES}?historyLimit=1"),
        "latest": await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/latest"),
        "events": await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/events"),
        "csv": await (await client.get(f"{HISTORY}?format=csv")).text(),
    }


@pytest.mark.parametrize(
    ("zone", "suffix"), [("", ""), ("Asia/Shanghai", "+08:00"), ("-03:30", "-03:30"), ("UTC", "+00:00")]
)
async def test_reading_times_carry_the_platform_offset_when_the_zone_is_set(app_client, zone, suffix):
    client = await app_client(TLINK_TIMEZONE=zone)
    found = await zone_answers(client)
    sensor = found["history"]["sensors"][0]
    assert sensor["history"][0]["recordedAt"] == "2026-05-01T08:00:05" + suffix
    assert sensor["latestRecordedAt"] == "2026-05-01T08:00:05" + suffix
    assert sensor["history"][0]["sensorTimestamp"] == "08:00:05"  # TLINK's own text, unchanged
    assert sensor["next"] == "2026-05-01T08:00:05"  # a cursor is a query parameter: no zone
    for part in ("history", "latest", "events"):
        assert found[part]["device"]["lastPushTime"] == "2026-05-01T08:00:05" + suffix
    device = found["devices"]["devices"][0]
    assert device["lastPushTime"] == device["sensors"][0]["history"][0]["recordedAt"] == "2026-05-01T08:00:05" + suffix
    assert found["latest"]["sensors"][0]["latest"]["recordedAt"] == "2026-05-01T08:00:05" + suffix
    assert found["events"]["events"][0]["receivedAt"].endswith("Z")  # UTC instants are as they were
    assert list(csv.reader(io.StringIO(found["csv"])))[1][4] == "2026-05-01T08:00:05" + suffix
    # the cursor goes back in as it came out
    body = await api_get(client, f"{HISTORY}?before={sensor['next']}")
    assert [r["recordedAt"] for r in body["sensors"][0]["history"]] == ["2026-05-01T08:00:00" + suffix]


async def test_coverage_gaps_carry_the_platform_offset(app_client):
    client = await app_client(TLINK_TIMEZONE="Asia/Shanghai")
    for n in [*range(0, 12 * 60, 60), *range(20 * 60, 24 * 60, 60)]:  # a reading a minute, eight minutes missing
        await push(client, push_body(clock(n), {1: str(n)}))
    body = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/coverage?day=2026-05-01")
    [gap] = body["sensors"][0]["gaps"]
    assert (gap["start"], gap["end"]) == ("2026-05-01T10:11:01+08:00", "2026-05-01T10:19:59+08:00")


# ---------------------------------------------------------------- CSV


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


async def test_csv_export_has_the_json_rows(app_client):
    client = await app_client()
    await push(client, push_body(clock(0), {1: 'a "quoted", value', 2: "plain"}))
    await push(client, push_body(clock(1), {1: "line\nbreak", 2: "2.5"}))
    await push(client, push_body(clock(2), {1: "3", 2: "é 中文"}))
    await sync_device(client, DEVICE, {1: None, 2: None})  # names and units

    resp = await client.get(f"{HISTORY}?format=csv")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    raw = await resp.read()
    assert raw.startswith(b"deviceId,sensorId,sensorName,unit,recordedAt,value,rawValue,isAlarm,isLine\r\n")
    assert b'"a ""quoted"", value"' in raw and b'"line\nbreak"' in raw  # RFC 4180 quoting
    rows = csv_rows(raw.decode())
    assert rows[0] == CSV_HEADER

    body = await api_get(client, HISTORY)
    flag = {True: "true", False: "false", None: ""}
    expected = [
        [str(DEVICE), str(s["sensorId"]), s["sensorName"] or "", s["unit"] or "", r["recordedAt"], r["value"] or "",
         r["rawValue"] or "", flag[r["isAlarm"]], flag[r["isLine"]]]
        for s in body["sensors"] for r in s["history"]
    ]  # fmt: skip
    assert rows[1:] == expected and len(expected) == 6
    assert rows[1] == [str(DEVICE), "1", "Sensor 1", "mm", "2026-05-01T10:00:02", "3", "3", "false", "true"]

    # the Accept header form gives the same; JSON stays the default
    for accept in ("text/csv", "text/csv, application/json;q=0.5", "text/*"):
        resp = await client.get(HISTORY, headers={"Accept": accept})
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8" and await resp.read() == raw, accept
    for accept in ("application/json", "*/*", "text/csv;q=0.5, application/json", "image/png", ""):
        resp = await client.get(HISTORY, headers={"Accept": accept})
        assert resp.content_type == "application/json", accept
    resp = await client.get(f"{HISTORY}?format=json", headers={"Accept": "text/csv"})
    assert resp.content_type == "application/json"


async def test_csv_export_follows_the_window_filters_and_limit(app_client):
    client = await app_client()
    for n in range(30):
        await push(client, push_body(clock(n), {1: str(n), 2: str(-n)}))
    window = f"startTime={clock(5)}&endTime={clock(20)}&historyLimit=4&sensorId=2"
    rows = csv_rows(await (await client.get(f"{HISTORY}?format=csv&{window}")).text())
    body = await api_get(client, f"{HISTORY}?{window}")
    assert [(r[1], r[4], r[5]) for r in rows[1:]] == [
        ("2", reading["recordedAt"], reading["value"]) for reading in body["sensors"][0]["history"]
    ]
    assert len(rows) == 5
    cursor = body["sensors"][0]["next"]
    older = csv_rows(await (await client.get(f"{HISTORY}?format=csv&{window}&before={cursor}")).text())
    assert len(older) == 5 and older[1][4] < rows[-1][4]
    empty = csv_rows(await (await client.get(f"{HISTORY}?format=csv&historyLimit=0")).text())
    assert empty == [CSV_HEADER]
    head = await client.head(f"{HISTORY}?format=csv")
    assert head.status == 200 and head.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert await head.read() == b""


async def test_bad_format_and_csv_errors_are_json(app_client):
    client = await app_client()
    await push(client, push_body(clock(0), {1: "a"}))
    for value in ("xml", "", "CSV", "csv,json"):
        body = await api_get(client, f"{HISTORY}?format={value}", status=400)
        assert body["error"].startswith("format"), body
    body = await api_get(client, f"{HISTORY}?format=csv&historyLimit=x", status=400)
    assert body["error"].startswith("historyLimit")
    body = await api_get(client, f"/api/users/{USER}/devices/4444/history?format=csv", status=404)
    assert "4444" in body["error"]
