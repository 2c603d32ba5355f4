"""Unit: events, their line encoding, and what push and sync bodies say."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventlog.events import PUSH, BadLine, Event, decode_line, encode_line, format_instant, new_event_id
from projections.readings import InvalidBody, parse_push, sync_readings
from tests.conftest import fixture_bytes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(
    body=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    device_id=st.integers(1, 2**62),
    user_id=st.integers(1, 2**62),
    millis=st.integers(0, 4_000_000_000_000),
)
def test_line_round_trip(body, device_id, user_id, millis):
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    event = Event(new_event_id(millis), PUSH, moment, device_id, user_id, body)
    line = encode_line(event, "a" * 64)
    assert b"\n" not in line
    decoded, prev = decode_line(line)
    assert decoded == event and prev == "a" * 64


def test_line_fields_and_format():
    event = Event(new_event_id(), PUSH, datetime(2026, 1, 2, 3, 4, 5, 678000, UTC), 7, 9, {"x": 1})
    doc = orjson.loads(encode_line(event, "0" * 64))
    assert list(doc) == ["v", "id", "type", "receivedAt", "deviceId", "userId", "prev", "body"]
    assert doc["receivedAt"] == "2026-01-02T03:04:05.678Z" and doc["v"] == 1


def test_event_ids_are_time_ordered_uuid7():
    first, second = new_event_id(1_000), new_event_id(2_000)
    assert first[14] == "7" and first < second


def test_event_ids_of_one_millisecond_sort_in_the_order_they_were_made():
    ids = [new_event_id(5_000) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert new_event_id(4_000) < ids[0]  # another millisecond starts afresh


@pytest.mark.parametrize("line", [b"", b"{", b'{"v":1}', b"[1,2]", b'{"id":"x","type":"push"}'])
def test_bad_lines_are_rejected(line):
    with pytest.raises(BadLine):
        decode_line(line)


def test_sample_push_readings():
    parsed = parse_push(orjson.loads(fixture_bytes("sample_push.json")))
    assert (parsed.device_id, parsed.user_id) == (2864, 385)
    assert [r.sensor_id for r in parsed.readings] == [11922, 11923, 11924]
    first = parsed.readings[0]
    assert first.recorded_at == datetime(2019, 5, 10, 14, 16, 21)
    assert (first.value, first.raw_value, first.is_alarm, first.is_line) == ("5.0", "5.0000", False, True)


def _push(**changes):
    body = orjson.loads(fixture_bytes("sample_push.json"))
    body.update(changes)
    return body


def test_reading_time_of_an_upload_straddling_midnight():
    body = _push(time="2024-03-02 00:00:05")
    body["sensorsDates"][0]["times"] = "23:59:58"
    body["sensorsDates"][1]["times"] = "00:00:01"
    readings = parse_push(body).readings
    assert readings[0].recorded_at == datetime(2024, 3, 1, 23, 59, 58)
    assert readings[1].recorded_at == datetime(2024, 3, 2, 0, 0, 1)


def test_numeric_string_user_id_is_accepted():
    assert parse_push(_push(deviceUserid="385")).user_id == 385


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"deviceId": None}, "deviceId must be an integer"),
        ({"deviceId": "28a"}, "deviceId must be an integer"),
        ({"deviceId": 1.5}, "deviceId must be an integer"),
        ({"deviceId": -3}, "deviceId must be a positive integer"),
        ({"deviceId": True}, "deviceId must be an integer"),
        ({"deviceUserid": "x"}, "deviceUserid must be an integer"),
        ({"sensorsDates": {}}, "sensorsDates must be a list"),
        ({"sensorsDates": [1]}, r"sensorsDates\[0\] must be an object"),
        ({"sensorsDates": [{"value": "1"}]}, r"missing field sensorsDates\[0\].sensorsId"),
        ({"time": "10/05/2019"}, "time must be 'YYYY-MM-DD HH:MM:SS'"),
        ({"time": "2019-02-30 10:00:00"}, "time is not a valid date"),
    ],
)
def test_invalid_push_bodies_name_the_problem(change, message):
    with pytest.raises(InvalidBody, match=message):
        parse_push(_push(**change))


@pytest.mark.parametrize("field", ["deviceId", "deviceUserid", "sensorsDates"])
def test_missing_required_field(field):
    body = _push()
    del body[field]
    with pytest.raises(InvalidBody, match=f"missing field {field}"):
        parse_push(body)


def test_sync_readings_skip_sensors_that_never_reported():
    device = orjson.loads(fixture_bytes("sync_page1.json"))["dataList"][0]
    readings = sync_readings(device)
    reported = [s for s in device["sensorsList"] if s["updateDate"]]
    assert [r.sensor_id for r in readings] == [s["id"] for s in reported]
    assert readings[0].recorded_at == datetime(2026, 11, 27, 9, 15)
    assert readings[0].sensor_timestamp == "2026-11-27 09:15:00"


def test_format_instant_has_milliseconds_and_z():
    assert format_instant(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("top", "entry", "message"),
    [
        ({}, {"sensorsTypeId": 2**63}, r"sensorsDates\[2\].sensorsTypeId must be an integer from -9223372036854775807"),
        ({}, {"sensorsTypeId": "-9223372036854775808"}, r"sensorsDates\[2\].sensorsTypeId"),
        ({}, {"sensorsTypeId": " 5"}, r"sensorsDates\[2\].sensorsTypeId"),
        ({}, {"sensorsTypeId": False}, r"sensorsDates\[2\].sensorsTypeId"),
        ({}, {"sensorsTypeId": "0" * 21}, r"sensorsDates\[2\].sensorsTypeId .* got '0{21}'"),
        ({}, {"value": "x" * 1025}, r"sensorsDates\[2\].value must be at most 1024 characters, got 1025"),
        ({}, {"reVal": True}, r"sensorsDates\[2\].reVal must be a string or a number, got a boolean"),
        ({}, {"unit": "u" * 65}, r"sensorsDates\[2\].unit must be at most 64 characters"),
        ({}, {"unit": {}}, r"sensorsDates\[2\].unit must be a string or a number, got an object"),
        ({}, {"sensorsId": "\u00b2"}, r"sensorsDates\[2\].sensorsId must be an integer"),
        ({}, {"sensorsId": "1" * 5000},
         r"sensorsDates\[2\].sensorsId must be an integer \(a number, or a string of at most 19 ASCII digits\),"
         r" got a string of 5000"),
        ({"parentUserId": "p" * 65}, {}, "parentUserId must be at most 64 characters"),
        ({"parentUserId": 2.5}, {}, "parentUserId must be a string or an integer, got a number"),
        ({"flag": "f" * 17}, {}, "flag must be at most 16 characters"),
        ({"flag": ["00"]}, {}, "flag must be a string or an integer, got an array"),
        ({"time": "0999-06-01 10:00:00"}, {}, "time must have a year from 1000 to 9999"),
        ({"time": "0000-01-01 00:00:00"}, {}, "time must have a year from 1000 to 9999"),
        ({"time": "1000-01-01 14:16:20"}, {}, r"sensorsDates\[0\].times '14:16:21' is later .* year from 1000"),
    ],
)
def test_values_that_do_not_fit_their_columns_are_invalid(top, entry, message):
    body = _push(**top)
    body["sensorsDates"][2].update(entry)
    with pytest.raises(InvalidBody, match=message):
        parse_push(body)


def test_values_at_the_limits_are_accepted_as_text():
    body = _push(parentUserId="p" * 64, flag=1, time="1000-01-02 00:00:00")
    body["sensorsDates"][0].update(times="00:00:01", sensorsTypeId=-(2**63 - 1), value="v" * 1024, reVal=2.5)
    body["sensorsDates"][1].update(times="00:00:00", sensorsTypeId="3000000000", unit="u" * 64, value=None)
    first, second, _ = parse_push(body).readings
    assert first.recorded_at == datetime(1000, 1, 1, 0, 0, 1) and (first.value, first.raw_value) == ("v" * 1024, "2.5")
    assert second.recorded_at == datetime(1000, 1, 2) and second.value is None


def test_a_day_before_the_first_day_is_invalid_not_an_overflow():
    from projections.readings import reading_time

    with pytest.raises(InvalidBody, match=r"sensorsDates\[3\].times"):
        reading_time(datetime(1, 1, 1), "00:00:01", 3)


def test_sync_readings_cut_values_and_skip_years_a_column_cannot_hold():
    sensors = [
        {"id": 1, "updateDate": "0999-12-31 23:59:59", "value": "1"},
        {"id": 2, "updateDate": "2026-11-27 09:15:00", "value": "v" * 5000},
        {"id": 3, "updateDate": "1000-01-01 00:00:00", "value": 7},
    ]
    readings = sync_readings({"sensorsList": sensors})
    assert [(r.sensor_id, r.value) for r in readings] == [(2, "v" * 1024), (3, "7")]
