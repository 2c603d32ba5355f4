"""End to end over HTTP: every value a push gives a read-model column is checked when the
body is accepted, on both database backends.

A value that does not fit its column is a 400 naming the field, kept in the dead-letter
log; a value at the limit is stored, projected and read back; and either way the
projector keeps going for every device afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from projections.readings import (
    MAX_FLAG_CHARS,
    MAX_PARENT_USER_ID_CHARS,
    MAX_SENSOR_TYPE_ID,
    MAX_UNIT_CHARS,
    MAX_VALUE_CHARS,
    MIN_SENSOR_TYPE_ID,
)
from tests.conftest import fixture_bytes

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
WIDE = "\U0001f600"  # four bytes in UTF-8: text at a character limit is also at its byte worst case


def body_with(top: dict[str, Any] | None = None, **entries: dict[str, Any]) -> bytes:
    """The sample push with top-level fields and entries changed (`e0`, `e1`, `e2`; `all` for each).

    Written with the standard json module: it writes integers of any size, as a sender may.
    """
    body = json.loads(json.dumps(SAMPLE))
    body.update(top or {})
    for i, entry in enumerate(body["sensorsDates"]):
        entry.update(entries.get("all", {}))
        entry.update(entries.get(f"e{i}", {}))
    return json.dumps(body, ensure_ascii=False).encode()


def other_device_push() -> bytes:
    """An ordinary push of another device and user."""
    body = json.loads(json.dumps(SAMPLE))
    body.update(deviceId=7331, deviceUserid=386, time="2019-05-11 08:00:00")
    for i, entry in enumerate(body["sensorsDates"]):
        entry.update(sensorsId=31922 + i, times="08:00:00")
    return json.dumps(body).encode()


async def post(client: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/webhooks/tlink", data=body)
    return resp.status, await resp.json()


async def get(client: Any, path: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get(path)
    return resp.status, await resp.json()


async def assert_still_projecting(client: Any) -> None:
    """The projector did not stop: another device's push is projected and the service is ready."""
    status, answer = await post(client, other_device_push())
    assert status == 200 and answer["projected"] is True, answer
    status, ready = await get(client, "/api/ready")
    assert status == 200, ready
    status, latest = await get(client, "/api/users/386/devices/7331/latest")
    assert status == 200 and [s["latestValue"] for s in latest["sensors"]] == ["5.0", "28.6", "0"]


# ---------------------------------------------------------------- rejected: 400, dead-lettered

TOO_LONG_VALUE = "x" * (MAX_VALUE_CHARS + 1)

REJECTED = [
    pytest.param(body_with(e2={"sensorsTypeId": 2**63}), "sensorsDates[2].sensorsTypeId", id="type-id-2^63"),
    pytest.param(body_with(e2={"sensorsTypeId": -(2**63)}), "sensorsDates[2].sensorsTypeId", id="type-id-minus-2^63"),
    pytest.param(body_with(e0={"sensorsTypeId": 2**64}), "sensorsDates[0].sensorsTypeId", id="type-id-2^64"),
    pytest.param(body_with(e0={"sensorsTypeId": -(10**30)}), "sensorsDates[0].sensorsTypeId", id="type-id-minus-1e30"),
    pytest.param(
        body_with(e1={"sensorsTypeId": str(2**63)}), "sensorsDates[1].sensorsTypeId", id="type-id-2^63-as-text"
    ),
    pytest.param(body_with(e1={"sensorsTypeId": "--5"}), "sensorsDates[1].sensorsTypeId", id="type-id-not-a-number"),
    pytest.param(body_with(e1={"sensorsTypeId": "\u00b2"}), "sensorsDates[1].sensorsTypeId", id="type-id-superscript"),
    pytest.param(body_with(e1={"sensorsTypeId": 1.5}), "sensorsDates[1].sensorsTypeId", id="type-id-fraction"),
    pytest.param(body_with(e1={"value": TOO_LONG_VALUE}), "sensorsDates[1].value", id="value-1025"),
    pytest.param(body_with(e2={"reVal": TOO_LONG_VALUE}), "sensorsDates[2].reVal", id="reVal-1025"),
    pytest.param(body_with(e0={"value": {"a": 1}}), "sensorsDates[0].value", id="value-object"),
    pytest.param(body_with(e0={"reVal": [1, 2]}), "sensorsDates[0].reVal", id="reVal-array"),
    pytest.param(body_with(e0={"unit": "u" * (MAX_UNIT_CHARS + 1)}), "sensorsDates[0].unit", id="unit-65"),
    pytest.param(body_with({"parentUserId": "p" * (MAX_PARENT_USER_ID_CHARS + 1)}), "parentUserId", id="parent-65"),
    pytest.param(body_with({"parentUserId": {"id": 217}}), "parentUserId", id="parent-object"),
    pytest.param(body_with({"flag": "f" * (MAX_FLAG_CHARS + 1)}), "flag", id="flag-17"),
    pytest.param(body_with({"time": "0999-06-01 10:00:00"}, all={"times": "10:00:00"}), "time", id="year-0999"),
    pytest.param(body_with({"time": "0001-01-01 00:00:00"}, all={"times": "00:00:01"}), "time", id="year-1-day-before"),
    pytest.param(
        body_with({"time": "1000-01-01 00:00:00"}, all={"times": "00:00:01"}),
        "sensorsDates[0].times",
        id="day-before-is-year-999",
    ),
]


@pytest.mark.parametrize(("body", "field"), REJECTED)
async def test_a_value_that_does_not_fit_is_a_400_naming_it_and_is_dead_lettered(app_client, log_root, body, field):
    client = await app_client()
    status, answer = await post(client, body)
    assert status == 400 and field in answer["error"], answer
    [rejected] = list((log_root / "rejected").iterdir())
    record = orjson.loads(rejected.read_bytes().splitlines()[-1])
    assert field in record["reason"] and record["body"] == body.decode()
    assert not [p for p in log_root.iterdir() if p.name != "rejected"]  # nothing was logged
    await assert_still_projecting(client)


@pytest.mark.parametrize(
    ("body", "limit"),
    [
        pytest.param(body_with(e0={"value": TOO_LONG_VALUE}), f"at most {MAX_VALUE_CHARS} characters", id="value"),
        pytest.param(body_with(e0={"unit": "u" * 65}), f"at most {MAX_UNIT_CHARS} characters", id="unit"),
        pytest.param(body_with({"flag": "f" * 17}), f"at most {MAX_FLAG_CHARS} characters", id="flag"),
        pytest.param(body_with({"time": "0999-06-01 10:00:00"}), "year from 1000 to 9999", id="year"),
        pytest.param(body_with(e0={"sensorsTypeId": 2**63}), str(MAX_SENSOR_TYPE_ID), id="type-id"),
    ],
)
async def test_the_400_says_the_limit(app_client, body, limit):
    client = await app_client()
    status, answer = await post(client, body)
    assert status == 400 and limit in answer["error"], answer


# ---------------------------------------------------------------- accepted at the limit: stored and read back


def sensor(latest: dict[str, Any], sensor_id: int) -> dict[str, Any]:
    [found] = [s for s in latest["sensors"] if s["sensorId"] == sensor_id]
    return found


@pytest.mark.parametrize(
    "type_id",
    [3_000_000_000, -3_000_000_000, MAX_SENSOR_TYPE_ID, MIN_SENSOR_TYPE_ID, "3000000000", "-3000000000", "", None],
)
async def test_a_sensor_type_id_within_64_bits_is_stored(app_client, type_id):
    client = await app_client()
    status, answer = await post(client, body_with(e0={"sensorsTypeId": type_id}))
    assert status == 200 and answer["projected"] is True, answer
    status, latest = await get(client, "/api/users/385/devices/2864/latest")
    assert status == 200
    expected = None if type_id in ("", None) else int(type_id)
    assert sensor(latest, 11922)["sensorTypeId"] == expected and sensor(latest, 11923)["sensorTypeId"] == 1
    await assert_still_projecting(client)


async def test_texts_at_their_limits_are_stored_whole(app_client):
    client = await app_client()
    value, raw, unit = "v" + WIDE * (MAX_VALUE_CHARS - 1), WIDE * MAX_VALUE_CHARS, WIDE * MAX_UNIT_CHARS
    parent, flag = WIDE * MAX_PARENT_USER_ID_CHARS, WIDE * MAX_FLAG_CHARS
    body = body_with({"parentUserId": parent, "flag": flag}, e1={"value": value, "reVal": raw, "unit": unit})
    status, answer = await post(client, body)
    assert status == 200 and answer["projected"] is True, answer
    status, latest = await get(client, "/api/users/385/devices/2864/latest")
    assert status == 200
    assert latest["device"]["parentUserId"] == parent and latest["device"]["lastFlag"] == flag
    assert latest["user"]["parentUserId"] == parent
    stored = sensor(latest, 11923)
    assert (stored["latestValue"], stored["latest"]["rawValue"], stored["unit"]) == (value, raw, unit)
    status, devices = await get(client, "/api/users/385/devices")
    assert status == 200
    [history] = [s["history"] for s in devices["devices"][0]["sensors"] if s["sensorId"] == 11923]
    assert [(r["value"], r["rawValue"]) for r in history] == [(value, raw)]
    await assert_still_projecting(client)


async def test_numbers_as_text_and_integer_ids_are_stored(app_client):
    client = await app_client()
    status, answer = await post(client, body_with({"parentUserId": 217, "flag": 0}, e0={"value": 5.5, "reVal": 12}))
    assert status == 200 and answer["projected"] is True, answer
    _, latest = await get(client, "/api/users/385/devices/2864/latest")
    assert latest["device"]["parentUserId"] == "217" and latest["device"]["lastFlag"] == "0"
    stored = sensor(latest, 11922)
    assert (stored["latestValue"], stored["latest"]["rawValue"]) == ("5.5", "12")


@pytest.mark.parametrize(
    ("time", "times", "recorded_at"),
    [
        ("1000-01-02 00:00:00", "00:00:01", "1000-01-01T00:00:01"),  # the day before, still year 1000
        ("1000-01-01 00:00:00", "00:00:00", "1000-01-01T00:00:00"),
        ("1000-01-01 12:00:00", "11:59:59", "1000-01-01T11:59:59"),
        ("9999-12-31 23:59:59", "23:59:59", "9999-12-31T23:59:59"),
    ],
)
async def test_the_first_and_last_years_are_stored_and_read_back(app_client, time, times, recorded_at):
    client = await app_client()
    status, answer = await post(client, body_with({"time": time}, all={"times": times}))
    assert status == 200 and answer["projected"] is True, answer
    status, latest = await get(client, "/api/users/385/devices/2864/latest")
    assert status == 200
    assert latest["device"]["lastPushTime"] == time.replace(" ", "T")
    assert {s["latest"]["recordedAt"] for s in latest["sensors"]} == {recorded_at}
    status, devices = await get(client, "/api/users/385/devices")  # the user's device list reads back
    assert status == 200 and [d["deviceId"] for d in devices["devices"]] == [2864]
    await assert_still_projecting(client)
