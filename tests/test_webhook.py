"""End to end over HTTP: the webhook on the real app, on both database backends."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from eventlog.files import device_days, log_path
from tests.conftest import fixture_bytes

SAMPLE = fixture_bytes("sample_push.json")


async def test_sample_push_is_logged_and_projected(app_client, log_root):
    client = await app_client()
    resp = await client.post("/api/webhooks/tlink", data=SAMPLE)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["status"] == "ok" and answer["storedReadings"] == 3 and answer["duplicate"] is False
    [day] = device_days(log_root, 2864)
    lines = log_path(log_root, 2864, day).read_bytes().splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert line["body"] == orjson.loads(SAMPLE)
    assert line["id"] == answer["eventId"] and line["type"] == "push" and line["prev"] == "0" * 64


async def post(client, body: bytes, **kwargs):
    resp = await client.post("/api/webhooks/tlink", data=body, **kwargs)
    return resp.status, await resp.json()


async def latest_values(database_url: str) -> dict[int, str]:
    from projections.db import connect

    db = await connect(database_url)
    try:
        return {int(s): v for s, v in await db.fetchall("SELECT sensor_id, latest_value FROM sensors")}
    finally:
        await db.close()


def sample_with(**changes) -> bytes:
    body = orjson.loads(SAMPLE)
    body.update(changes)
    return orjson.dumps(body)


async def test_read_your_writes_the_answer_comes_after_the_read_models(app_client, database_url):
    client = await app_client()
    status, answer = await post(client, SAMPLE)
    assert status == 200 and answer["projected"] is True
    assert await latest_values(database_url) == {11922: "5.0", 11923: "28.6", 11924: "0"}


async def test_identical_redelivery_is_a_duplicate_and_stored_once(app_client, log_root):
    client = await app_client()
    _, first = await post(client, SAMPLE)
    spaced = orjson.dumps(orjson.loads(SAMPLE), option=orjson.OPT_INDENT_2)  # same JSON, other bytes
    for body in (SAMPLE, spaced):
        status, again = await post(client, body)
        assert status == 200 and again["duplicate"] is True and again["eventId"] == first["eventId"]
        assert again["storedReadings"] == 0
    [day] = device_days(log_root, 2864)
    assert len(log_path(log_root, 2864, day).read_bytes().splitlines()) == 1


async def test_concurrent_identical_redeliveries_store_one(app_client, log_root):
    import asyncio

    client = await app_client()
    answers = await asyncio.gather(*(post(client, SAMPLE) for _ in range(10)))
    assert [a["duplicate"] for _, a in answers].count(False) == 1
    [day] = device_days(log_root, 2864)
    assert len(log_path(log_root, 2864, day).read_bytes().splitlines()) == 1


async def test_redelivery_after_a_restart_is_still_a_duplicate(app_client, log_root):
    client = await app_client()
    await post(client, SAMPLE)
    await client.close()
    client = await app_client()
    status, answer = await post(client, SAMPLE)
    assert status == 200 and answer["duplicate"] is True


def upload(time: str, value: str) -> bytes:
    body = orjson.loads(SAMPLE)
    body["time"] = time
    for entry in body["sensorsDates"]:
        entry["times"], entry["value"] = time[11:], value
    return orjson.dumps(body)


async def test_latest_means_newest_reading_time(app_client, database_url):
    client = await app_client()
    assert (await post(client, upload("2019-05-10 15:00:00", "new")))[0] == 200
    assert (await post(client, upload("2019-05-10 13:00:00", "old")))[0] == 200  # late and older
    assert (await latest_values(database_url))[11922] == "new"
    assert (await post(client, upload("2019-05-10 16:00:00", "newest")))[0] == 200
    assert (await latest_values(database_url))[11922] == "newest"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"", "empty body"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"deviceUserid": 1, "sensorsDates": []}', "missing field deviceId"),
        (b'{"deviceId": 1, "sensorsDates": []}', "missing field deviceUserid"),
        (b'{"deviceId": 1, "deviceUserid": 1}', "missing field sensorsDates"),
        (b'{"deviceId": "../../etc", "deviceUserid": 1, "sensorsDates": []}', "deviceId must be an integer"),
        (b'{"deviceId": 1.5, "deviceUserid": 1, "sensorsDates": [], "time": "2019-05-10 14:16:21"}', "deviceId"),
        (b"\xff\xfe{", "invalid JSON"),
    ],
)
async def test_bad_bodies_get_a_clear_400_and_are_dead_lettered(app_client, log_root, body, message):
    client = await app_client()
    status, answer = await post(client, body)
    assert status == 400 and message in answer["error"]
    [rejected] = list((log_root / "rejected").iterdir())
    record = orjson.loads(rejected.read_bytes().splitlines()[-1])
    assert message in record["reason"]
    assert record.get("body", "") == body.decode("utf-8", "replace") or "bodyBase64" in record
    assert not [p for p in log_root.iterdir() if p.name != "rejected"]  # no device folder was made


async def test_body_over_the_size_limit_is_413(app_client, log_root):
    client = await app_client(MAX_BODY_BYTES=2048)
    big = sample_with(rawData="A" * 4096)
    status, answer = await post(client, big)
    assert status == 413 and "too large" in answer["error"]
    assert not log_root.exists() or not any(p.name.isdigit() for p in log_root.iterdir())


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("prefix", ["sha256=", ""])
async def test_valid_signature_is_accepted(app_client, prefix):
    client = await app_client(PUSH_WEBHOOK_SECRET="s3cret")
    status, _ = await post(client, SAMPLE, headers={"X-TLink-Signature": prefix + sign("s3cret", SAMPLE)})
    assert status == 200


@pytest.mark.parametrize("header", [None, "sha256=" + "0" * 64, "garbage"])
async def test_bad_signature_is_401_and_stores_nothing(app_client, log_root, header):
    client = await app_client(PUSH_WEBHOOK_SECRET="s3cret")
    headers = {"X-TLink-Signature": header} if header else {}
    status, answer = await post(client, SAMPLE, headers=headers)
    assert status == 401 and "X-TLink-Signature" in answer["error"]
    assert not log_root.exists() or not list(log_root.iterdir())


async def test_url_token(app_client, log_root):
    client = await app_client(WEBHOOK_TOKEN="tok-123")
    status, _ = await post(client, SAMPLE, params={"token": "wrong"})
    assert status == 401
    status, _ = await post(client, SAMPLE)
    assert status == 401
    assert not log_root.exists() or not list(log_root.iterdir())
    status, _ = await post(client, SAMPLE, params={"token": "tok-123"})
    assert status == 200


async def test_log_not_writable_is_503_and_nothing_is_acknowledged(app_client, log_root):
    client = await app_client()
    log_root.mkdir(parents=True, exist_ok=True)
    (log_root / "2864").write_bytes(b"")  # a file where the device folder should be
    status, answer = await post(client, SAMPLE)
    assert status == 503 and "event log" in answer["error"]
    (log_root / "2864").unlink()
    status, answer = await post(client, SAMPLE)
    assert status == 200 and answer["duplicate"] is False


async def test_unknown_route_and_method_are_json(app_client):
    client = await app_client()
    resp = await client.get("/api/webhooks/tlink")
    assert resp.status == 405 and "error" in await resp.json()


async def test_after_a_restart_only_newer_uploads_skip_the_duplicate_check(app_client, database_url):
    client = await app_client()
    first, second = upload("2019-05-10 15:00:00", "1"), upload("2019-05-10 16:00:00", "2")
    for body in (first, second):
        assert (await post(client, body))[1]["duplicate"] is False
    await client.close()
    client = await app_client()  # a new process: nothing in memory
    for body in (first, second):  # older than or as new as the newest stored upload: found in the database
        status, answer = await post(client, body)
        assert status == 200 and answer["duplicate"] is True
    late = upload("2019-05-10 14:00:00", "late")  # older, but never seen: stored
    newer = upload("2019-05-10 17:00:00", "3")
    for body in (late, newer, late, newer):
        status, answer = await post(client, body)
        assert status == 200
    assert [(await post(client, b))[1]["duplicate"] for b in (late, newer)] == [True, True]


async def test_last_push_time_is_the_newest_upload_and_last_flag_the_last_received(app_client):
    client = await app_client()
    newer = orjson.loads(upload("2019-05-10 16:00:00", "new"))
    older = orjson.loads(upload("2019-05-10 15:00:00", "old"))
    older["flag"] = "01"
    for body in (newer, older):  # the older upload arrives last
        assert (await post(client, orjson.dumps(body)))[0] == 200
    resp = await client.get("/api/users/385/devices/2864/latest")
    device = (await resp.json())["device"]
    assert device["lastPushTime"] == "2019-05-10T16:00:00" and device["lastFlag"] == "01"
