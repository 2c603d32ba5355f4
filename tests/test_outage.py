"""The database going away and coming back: pushes keep being accepted, nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import copy

import orjson
import pytest

from eventlog.files import device_days, log_path
from ops.private_mariadb import available
from service.config import load_settings
from service.http.app import create_app
from service.http.keys import SERVICES
from tests.conftest import fixture_bytes

pytestmark = [pytest.mark.mysql, pytest.mark.slow, pytest.mark.skipif(not available(), reason="no mariadbd")]

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))


def upload(i: int) -> bytes:
    body = copy.deepcopy(SAMPLE)
    body["time"] = f"2019-05-10 10:{i // 60:02d}:{i % 60:02d}"
    for entry in body["sensorsDates"]:
        entry["times"], entry["value"] = body["time"][11:], str(i)
    return orjson.dumps(body)


async def wait_for(predicate, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_outage_then_recovery(aiohttp_client, mariadb, tmp_path):
    settings = load_settings(DATABASE_URL=mariadb.url, SYNC_LOG_DIR=tmp_path / "logs", USE_HTTPS=False)
    client = await aiohttp_client(create_app(settings))
    projector = client.app[SERVICES].projector
    projector.retry_seconds = 0.2

    resp = await client.post("/api/webhooks/tlink", data=upload(0))
    assert resp.status == 200 and (await resp.json())["projected"] is True

    mariadb.kill()
    during = []
    for i in range(1, 21):
        resp = await client.post("/api/webhooks/tlink", data=upload(i))
        during.append((resp.status, await resp.json()))
    assert all(status == 200 for status, _ in during)
    assert not any(answer["projected"] for _, answer in during)
    redelivered = await client.post("/api/webhooks/tlink", data=upload(3))  # unknown to the DB: log decides
    assert redelivered.status == 200 and (await redelivered.json())["duplicate"] is True

    mariadb.start()
    await wait_for(lambda: projector.available and projector.behind == 0)
    assert mariadb.query("SELECT COUNT(*) FROM events") == [(21,)]
    assert mariadb.query("SELECT COUNT(*) FROM sensor_readings") == [(63,)]
    assert mariadb.query("SELECT latest_value FROM sensors WHERE sensor_id = 11922") == [("20",)]
    [day] = device_days(tmp_path / "logs", 2864)
    assert len(log_path(tmp_path / "logs", 2864, day).read_bytes().splitlines()) == 21

    resp = await client.post("/api/webhooks/tlink", data=upload(21))
    assert (await resp.json())["projected"] is True
    assert mariadb.query("SELECT COUNT(*) FROM events") == [(22,)]


async def test_start_with_the_database_down(aiohttp_client, mariadb, tmp_path):
    mariadb.kill()
    settings = load_settings(DATABASE_URL=mariadb.url, SYNC_LOG_DIR=tmp_path / "logs", USE_HTTPS=False)
    client = await aiohttp_client(create_app(settings))
    projector = client.app[SERVICES].projector
    projector.retry_seconds = 0.2
    for i in range(5):
        resp = await client.post("/api/webhooks/tlink", data=upload(i))
        assert resp.status == 200
    mariadb.start()
    await wait_for(lambda: projector.available and projector.behind == 0)
    assert mariadb.query("SELECT COUNT(*) FROM events") == [(5,)]
