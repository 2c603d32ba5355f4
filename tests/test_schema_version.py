"""A database made by an older version is rebuilt from the log at start-up, and refused elsewhere with a clear error."""

from __future__ import annotations

import asyncio
import copy

import orjson
import pytest

from projections.db import connect
from projections.schema import SCHEMA_VERSION, SchemaOutdated, apply_schema, stored_version
from tests.conftest import fixture_bytes

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))

# The version 1 sensors table: one row per sensor id, whichever device reported it.
OLD_SENSORS = (
    "CREATE TABLE sensors (sensor_id BIGINT NOT NULL PRIMARY KEY, device_id BIGINT NOT NULL, sensor_name TEXT NULL,"
    " sensor_type_id INT NULL, unit TEXT NULL, ordernum INT NULL, latest_value TEXT NULL, latest_raw_value TEXT NULL,"
    " latest_recorded_at DATETIME NULL, latest_sensor_timestamp TEXT NULL, is_alarm INT NULL, is_line INT NULL,"
    " meta_updated_at DATETIME NULL)"
)


async def make_version_1(url: str) -> None:
    db = await connect(url)
    try:
        await apply_schema(db)
        async with db.transaction() as cur:
            await cur.execute("DROP TABLE schema_info")
            await cur.execute("DROP TABLE sensors")
            await cur.execute(OLD_SENSORS)
            await cur.execute(
                "INSERT INTO log_files (device_id, log_day, line_count, byte_count, last_hash) VALUES (1, '2026-01-01',"
                " 1, 10, %s)",
                ["0" * 64],
            )
        assert await stored_version(db) == 1
    finally:
        await db.close()


async def test_the_service_rebuilds_an_older_database_from_the_log(app_client, database_url):
    client = await app_client()
    for device_id in (2864, 2865):  # the same sensor ids on two devices
        body = copy.deepcopy(SAMPLE) | {"deviceId": device_id}
        assert (await client.post("/api/webhooks/tlink", json=body)).status == 200
    await client.close()
    await make_version_1(database_url)

    client = await app_client()
    for _ in range(200):
        ready = await client.get("/api/ready")
        if ready.status == 200:
            break
        await asyncio.sleep(0.02)
    devices = (await (await client.get("/api/users/385/devices")).json())["devices"]
    assert {d["deviceId"]: len(d["sensors"]) for d in devices} == {2864: 3, 2865: 3}
    db = await connect(database_url)
    try:
        assert await stored_version(db) == SCHEMA_VERSION
        assert (await db.fetchall("SELECT COUNT(*) FROM events"))[0][0] == 2
    finally:
        await db.close()


async def test_other_commands_refuse_an_older_database(database_url):
    await make_version_1(database_url)
    db = await connect(database_url)
    try:
        with pytest.raises(SchemaOutdated, match="tlink-push replay"):
            await apply_schema(db)
    finally:
        await db.close()


async def test_nodes_starting_together_on_a_new_database_all_apply_the_schema(database_url):
    # Cluster nodes (and a replay started beside a service) may all create the tables of a new database at once.
    dbs = [await connect(database_url) for _ in range(6)]
    try:
        for _ in range(3):
            await asyncio.gather(*(apply_schema(db) for db in dbs))
        assert {await stored_version(db) for db in dbs} == {SCHEMA_VERSION}
        rows = await dbs[0].fetchall("SELECT name, version FROM schema_info")
        assert [tuple(row) for row in rows] == [("tables", SCHEMA_VERSION)]
    finally:
        for db in dbs:
            await db.close()
