"""End to end over HTTP, on both database backends: a push body is logged only when the
logged body is the body received, value for value, and fits the service's caps.

Every hostile body below is a 400 naming the field or the problem, is kept in the
dead-letter log, leaves no line in any device's log, and an ordinary push is stored
afterwards. Bodies are written out as text: duplicate keys, huge integers and deep
nesting are what a JSON writer would not produce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.http.body import MAX_JSON_DEPTH
from tests.conftest import fixture_bytes

SAMPLE_BYTES = fixture_bytes("sample_push.json")
SAMPLE = orjson.loads(SAMPLE_BYTES)
DEVICE, USER = SAMPLE["deviceId"], SAMPLE["deviceUserid"]


def dumped(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def body_with(top: dict[str, Any] | None = None, **entries: dict[str, Any]) -> bytes:
    """The sample push with top-level fields and entries (`e0`, `e1`, `e2`) changed."""
    body = json.loads(SAMPLE_BYTES)
    body.update(top or {})
    for i, entry in enumerate(body["sensorsDates"]):
        entry.update(entries.get(f"e{i}", {}))
    return dumped(body)


def with_raw_field(raw: str, in_sample: bool = False) -> bytes:
    """The sample push with `raw` (text such as '"x": 1') added first to the body or to its first sample."""
    text = dumped(json.loads(SAMPLE_BYTES)).decode()
    if in_sample:
        head, tail = text.split('"sensorsDates": [{', 1)
        return f'{head}"sensorsDates": [{{{raw}, {tail}'.encode()
    return f"{{{raw}, {text[1:]}".encode()


def nested(levels: int) -> bytes:
    """The sample push nesting `levels` levels deep in all (the body itself is level 1)."""
    return with_raw_field('"extra": ' + "[" * (levels - 1) + "]" * (levels - 1))


def samples(count: int, first_sensor: int = 11922, time: str = "2019-05-10 14:16:21") -> bytes:
    body = json.loads(SAMPLE_BYTES)
    entry = body["sensorsDates"][0]
    body["time"] = time
    body["sensorsDates"] = [dict(entry, sensorsId=first_sensor + i) for i in range(count)]
    return dumped(body)


async def post(client: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/webhooks/tlink", data=body)
    return resp.status, await resp.json()


def device_logs(log_root: Path) -> list[Path]:
    return [p for p in log_root.rglob("*.log") if "rejected" not in p.parts]


def logged_bodies(log_root: Path) -> list[Any]:
    return [orjson.loads(line)["body"] for p in sorted(device_logs(log_root)) for line in p.read_bytes().splitlines()]


def last_dead_letter(log_root: Path) -> dict[str, Any]:
    [rejected] = list((log_root / "rejected").iterdir())
    return orjson.loads(rejected.read_bytes().splitlines()[-1])  # type: ignore[no-any-return]


async def assert_rejected(client: Any, log_root: Path, body: bytes, named: str) -> None:
    """400 naming `named`, dead-lettered as received, nothing logged; then a normal push is stored."""
    logged_before = logged_bodies(log_root)
    status, answer = await post(client, body)
    assert status == 400, answer
    assert named in answer["error"], answer
    record = last_dead_letter(log_root)
    assert named in record["reason"] and record["body"] == body.decode()
    assert logged_bodies(log_root) == logged_before  # nothing logged for it
    status, answer = await post(client, samples(1, time=f"2019-05-10 15:{len(logged_before):02d}:00"))
    assert status == 200 and answer["duplicate"] is False, answer


ODD_DIGITS = ["²", "١٢٣", "１٢", " 5", "5\n", "5 ", "\t5", "+5", "-5", "5\u00a0"]

REJECTED = [
    pytest.param(nested(MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH} levels", id="depth-33"),
    pytest.param(nested(255), f"deeper than {MAX_JSON_DEPTH} levels", id="depth-255"),
    pytest.param(nested(1024), f"deeper than {MAX_JSON_DEPTH} levels", id="depth-1024"),
    pytest.param(nested(1025), "depth limit exceeded", id="depth-1025"),
    *[
        pytest.param(body_with({field: digits}), field, id=f"{field}-{digits.encode('unicode_escape').decode()}")
        for field in ("deviceId", "deviceUserid")
        for digits in ODD_DIGITS
    ],
    *[
        pytest.param(
            body_with(e0={"sensorsId": digits}),
            "sensorsDates[0].sensorsId",
            id=f"sensorsId-{digits.encode('unicode_escape').decode()}",
        )
        for digits in ODD_DIGITS
    ],
    pytest.param(body_with({"time": "٢٠١٩-05-10 14:16:21"}), "time", id="time-arabic-indic"),
    pytest.param(body_with({"time": "2019-05-10 １4:16:21"}), "time", id="time-fullwidth"),
    pytest.param(body_with({"time": "2019-05-10 14:16:21\n"}), "time", id="time-newline"),
    pytest.param(body_with({"time": " 2019-05-10 14:16:21"}), "time", id="time-space"),
    pytest.param(body_with(e0={"times": "١٤:16:21"}), "sensorsDates[0].times", id="times-arabic-indic"),
    pytest.param(body_with(e0={"times": "14:16:21\n"}), "sensorsDates[0].times", id="times-newline"),
    pytest.param(body_with(e1={"sensorsTypeId": "١"}), "sensorsDates[1].sensorsTypeId", id="type-id-arabic-indic"),
    pytest.param(body_with(e1={"sensorsTypeId": "1\n"}), "sensorsDates[1].sensorsTypeId", id="type-id-newline"),
    pytest.param(body_with({"deviceId": "1" * 5000}), "deviceId", id="id-5000-digit-string"),
    pytest.param(with_raw_field('"deviceId": ' + "1" * 5000), "number is infinity", id="id-5000-digit-number"),
    pytest.param(with_raw_field('"deviceId": 5001'), "body: duplicate key 'deviceId'", id="duplicate-top"),
    pytest.param(
        with_raw_field('"sensorsId": 5001', in_sample=True),
        "sensorsDates[0]: duplicate key 'sensorsId'",
        id="duplicate-sample",
    ),
    pytest.param(with_raw_field('"deviceId" : 5001'), "body: duplicate key 'deviceId'", id="duplicate-spaced"),
    pytest.param(
        with_raw_field('"deviceId": 5001, "extra": "\\u003a"'),
        "body: duplicate key 'deviceId'",
        id="duplicate-with-escaped-colon",
    ),
    pytest.param(
        with_raw_field('"unit": "a", "unit": "b:c"', in_sample=True),
        "sensorsDates[0]: duplicate key 'unit'",
        id="duplicate-with-colon-in-value",
    ),
    pytest.param(with_raw_field(f'"extra": {2**64}'), f"extra: integer {2**64} is outside", id="int-2^64"),
    pytest.param(
        with_raw_field(f'"extra": {-(2**63) - 1}', in_sample=True),
        f"sensorsDates[0].extra: integer {-(2**63) - 1} is outside",
        id="int-minus-2^63-1",
    ),
    pytest.param(with_raw_field(f'"extra": [1, {2**64}]'), "extra[1]: integer", id="int-2^64-in-array"),
    pytest.param(body_with({"deviceId": 2**64}), "deviceId: integer 18446744073709551616 is outside", id="id-2^64"),
    pytest.param(
        with_raw_field('"extra": 1e-400', in_sample=True),
        "sensorsDates[0].extra: number 1e-400 is too small",
        id="1e-400",
    ),
    pytest.param(with_raw_field('"extra": -2.5E-330'), "extra: number -2.5E-330 is too small", id="-2.5E-330"),
    pytest.param(with_raw_field('"extra": 1e400', in_sample=True), "number is infinity", id="1e400"),
    pytest.param(
        with_raw_field('"extra": 9007199254740993.0', in_sample=True),
        "sensorsDates[0].extra: number 9007199254740993.0 has more significant digits than a double keeps",
        id="2^53+1",
    ),
    pytest.param(
        with_raw_field('"extra": 0.10000000000000000555'), "extra: number 0.10000000000000000555 has more", id="0.1+"
    ),
    pytest.param(
        with_raw_field('"extra": 2.2250738585072011e-308'), "logged as 2.225073858507201e-308", id="subnormal-edge"
    ),
    pytest.param(samples(1001), "at most 1000 per push (MAX_SAMPLES_PER_PUSH)", id="samples-over-default-cap"),
]


@pytest.mark.parametrize(("body", "named"), REJECTED)
async def test_a_hostile_body_is_a_400_naming_it_dead_lettered_and_not_logged(app_client, log_root, body, named):
    client = await app_client()
    await assert_rejected(client, log_root, body, named)


ACCEPTED = [
    pytest.param(nested(MAX_JSON_DEPTH), id="depth-32"),
    pytest.param(with_raw_field(f'"extra": [{2**64 - 1}, {-(2**63)}]'), id="64-bit-integers"),
    pytest.param(with_raw_field('"extra": [0.0, -0.0, 0e-400, 1e19, 2.5e-300, 1.5]'), id="floats"),
    pytest.param(with_raw_field('"extra": [1.50000000000000000, 0.1000000000000000, 12345678901234567890]'),
                 id="long-numbers-kept-as-written"),
    pytest.param(with_raw_field('"extra" : "a\\": b", "other":"\\":"'), id="quote-colon-in-strings"),
    pytest.param(SAMPLE_BYTES.replace(b'": ', b'" :\n '), id="spaced-colons"),
    pytest.param(with_raw_field('"extra": "\\u003a:\\u003A"'), id="escaped-colons"),
    pytest.param(samples(1000), id="samples-at-cap"),
]


@pytest.mark.parametrize("body", ACCEPTED)
async def test_an_unusual_but_faithful_body_is_logged_value_for_value(app_client, log_root, body):
    client = await app_client()
    status, answer = await post(client, body)
    assert status == 200, answer
    assert logged_bodies(log_root) == [json.loads(body)]


async def test_samples_per_push_is_a_setting(app_client, log_root):
    client = await app_client(MAX_SAMPLES_PER_PUSH=2)
    await assert_rejected(client, log_root, samples(3), "sensorsDates has 3 samples: at most 2 per push")
    status, answer = await post(client, samples(2, time="2019-05-10 16:00:00"))
    assert status == 200, answer


async def test_a_device_over_the_sensor_cap_across_two_pushes_is_a_400(app_client, log_root):
    client = await app_client(MAX_SENSORS_PER_DEVICE=4)
    status, answer = await post(client, SAMPLE_BYTES)  # sensors 11922..11924
    assert status == 200, answer
    over = samples(4, first_sensor=11923, time="2019-05-10 14:20:00")  # 11925 and 11926 are new: 5 in all
    status, answer = await post(client, over)
    assert status == 400, answer
    assert (
        "would have 5 sensors" in answer["error"] and "at most 4 per device (MAX_SENSORS_PER_DEVICE)" in answer["error"]
    )
    assert "MAX_SENSORS_PER_DEVICE" in last_dead_letter(log_root)["reason"]
    assert logged_bodies(log_root) == [SAMPLE]
    # Known sensors and one new one (the fourth) are still welcome; another device is not limited by this one.
    status, answer = await post(client, samples(3, first_sensor=11923, time="2019-05-10 14:21:00"))
    assert status == 200, answer
    status, answer = await post(client, samples(4, first_sensor=1, time="2019-05-10 14:22:00").replace(
        f'"deviceId": {DEVICE}'.encode(), b'"deviceId": 7331'
    ))  # fmt: skip
    assert status == 200, answer
    assert len(logged_bodies(log_root)) == 3


async def test_the_sensor_cap_counts_the_sensors_in_the_database_after_a_restart(app_client, log_root):
    first = await app_client(MAX_SENSORS_PER_DEVICE=4)
    status, answer = await post(first, SAMPLE_BYTES)
    assert status == 200 and answer["projected"] is True, answer
    await first.close()
    client = await app_client(MAX_SENSORS_PER_DEVICE=4)
    status, answer = await post(client, samples(2, first_sensor=11930, time="2019-05-10 14:30:00"))
    assert status == 400 and "would have 5 sensors" in answer["error"], answer
    status, answer = await post(client, samples(1, first_sensor=11930, time="2019-05-10 14:31:00"))
    assert status == 200, answer


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (f"/api/users/{USER}/devices/١٢٣/latest", "deviceId"),
        (f"/api/users/{USER}/devices/%205/latest", "deviceId"),
        (f"/api/users/{USER}/devices/5%0A/latest", "deviceId"),
        ("/api/users/%EF%BC%91%D9%A2/devices", "userId"),
        (f"/api/users/{USER}/devices?page=%D9%A1", "page"),
        (f"/api/users/{USER}/devices?page=1%0A", "page"),
        (f"/api/users/{USER}/devices?pageSize=%201", "pageSize"),
    ],
)
async def test_path_and_query_integers_take_ascii_digits_only(app_client, path, named):
    client = await app_client()
    resp = await client.get(path)
    assert resp.status == 400, await resp.text()
    assert named in (await resp.json())["error"]
