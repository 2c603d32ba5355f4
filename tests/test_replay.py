"""Replay and rebuild on both backends: the log alone reproduces the database."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from eventlog.events import SYNC
from projections.db import connect
from projections.rebuild import rebuild
from projections.replay import replay_logs
from projections.schema import ALL_TABLES, READ_MODEL_TABLES
from service.http.keys import SERVICES
from tests.conftest import fixture_bytes

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))


def pushes(n: int) -> list[dict[str, Any]]:
    bodies = []
    for i in range(n):
        body = copy.deepcopy(SAMPLE)
        body["deviceId"] = 2864 + i % 3
        body["time"] = f"2019-05-10 14:{i // 60:02d}:{i % 60:02d}"
        for entry in body["sensorsDates"]:
            entry["times"] = body["time"][11:]
            entry["sensorsId"] += 10 * (i % 3)
            entry["value"] = str(i)
        bodies.append(body)
    return bodies


async def dump(url: str, tables: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    db = await connect(url)
    try:
        return {t: sorted(map(repr, await db.fetchall(f"SELECT * FROM {t}"))) for t in tables}  # type: ignore[misc]
    finally:
        await db.close()


async def fill(app_client) -> Any:
    client = await app_client()
    for body in pushes(40):
        resp = await client.post("/api/webhooks/tlink", data=orjson.dumps(body))
        assert resp.status == 200
    device = orjson.loads(fixture_bytes("sync_page1.json"))["dataList"][0]
    await client.app[SERVICES].ingestor.sync_device(385, device)
    await client.close()
    return client


async def test_replay_reproduces_the_database_and_twice_gives_the_same(app_client, database_url, log_root):
    await fill(app_client)
    live = await dump(database_url, ALL_TABLES)
    assert len(live["events"]) == 41 and len(live["sensor_readings"]) == 120 + 3
    db = await connect(database_url)
    try:
        assert (await replay_logs(db, log_root)).events == 41
        first = await dump(database_url, ALL_TABLES)
        assert (await replay_logs(db, log_root)).events == 41
        second = await dump(database_url, ALL_TABLES)
    finally:
        await db.close()
    assert first == second
    for table in (*READ_MODEL_TABLES, "log_files", "log_blocks"):
        assert first[table] == live[table], table


async def test_rebuild_switches_to_identical_read_models(app_client, database_url, log_root):
    await fill(app_client)
    live = await dump(database_url, READ_MODEL_TABLES)
    db = await connect(database_url)
    try:
        report = await rebuild(db, log_root)
        assert report.first_pass == 41
        again = await rebuild(db, log_root)  # leaves no leftovers in the way of the next one
        assert again.first_pass == 41
    finally:
        await db.close()
    assert await dump(database_url, READ_MODEL_TABLES) == live


async def test_sync_events_replay_with_their_names(app_client, database_url, log_root):
    client = await app_client()
    device = orjson.loads(fixture_bytes("sync_page1.json"))["dataList"][0]
    appended = await client.app[SERVICES].ingestor.sync_device(385, device)
    assert appended.event.type == SYNC
    await client.close()
    db = await connect(database_url)
    try:
        await replay_logs(db, log_root)
        rows = await db.fetchall("SELECT device_name, device_no FROM devices WHERE device_id = 3000")
    finally:
        await db.close()
    assert rows == [("Tank 1", "ATG00003000")]


async def test_replay_in_two_processes_gives_the_same_database(app_client, database_url, log_root):
    await fill(app_client)
    db = await connect(database_url)
    try:
        assert (await replay_logs(db, log_root)).events == 41
        one = await dump(database_url, ALL_TABLES)
        seen: list[int] = []
        assert (await replay_logs(db, log_root, seen.append, database_url, workers=2)).events == 41
        two = await dump(database_url, ALL_TABLES)
    finally:
        await db.close()
    assert two == one
    assert seen and seen[-1] == 41


async def test_rebuild_while_pushes_keep_coming_loses_nothing(app_client, database_url, log_root):
    import asyncio

    client = await app_client()
    bodies = pushes(120)
    for body in bodies[:40]:
        assert (await client.post("/api/webhooks/tlink", data=orjson.dumps(body))).status == 200

    async def keep_pushing() -> None:
        for body in bodies[40:]:
            assert (await client.post("/api/webhooks/tlink", data=orjson.dumps(body))).status == 200
            await asyncio.sleep(0.002)

    db = await connect(database_url)
    try:
        pushing = asyncio.create_task(keep_pushing())
        report = await rebuild(db, log_root)
        await pushing
        during = await dump(database_url, READ_MODEL_TABLES)
        await client.close()
        await replay_logs(db, log_root)  # what the log alone says
    finally:
        await db.close()
    assert report.first_pass >= 40
    assert await dump(database_url, READ_MODEL_TABLES) == during
    assert len(during["sensor_readings"]) == 3 * 120
