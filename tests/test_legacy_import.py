"""`tlink-push import-legacy`: the original Flask service's MySQL rows and sync logs become `legacy` events.

The old database is created on the real MariaDB from tests/fixtures/legacy_schema.sql and
legacy_data.sql (a database of its own); the new service's database is each backend's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from eventlog.events import LEGACY, Event, decode_line, encode_line, utc_now
from projections.db import mysql_connect, parse_database_url, split_statements
from projections.readings import InvalidBody, legacy_line_readings, legacy_readings
from tests.conftest import FIXTURES, mysql_database_url, run_cli

OLD_LINES = (
    b"2024-05-01 10:00:00 | device=5001 | sensors=2 | 11:12.5 | 12:21.5\n"  # 11 at 10:00 is also a database row
    b"2024-05-01 10:10:00 | device=5001 | sensors=2 | 11:12.7 | 12:21.9\n"
)
OLD_NAME = "5001/device5001-2024-05-01.log"
FOREIGN_NAME = "5002/device5002-2024-05-01.log.foreign"  # already moved aside by a start of the new service
FOREIGN_LINES = b"2024-05-01 11:10:00 | device=5002 | sensors=1 | 21:2.5\n"
UNPLACED = (
    "not imported: devices id=3: its device 5003 has no user (user_id is NULL)",
    "not imported: sensors id=4: it has no device (device_id is NULL)",
    "not imported: sensor_readings id=5: its sensor (sensors id=4): it has no device (device_id is NULL)",
    "not imported: sensor_readings id=6: it has no sensor (sensor_id is NULL)",
)


def load_script(url: str, *names: str) -> None:
    parsed = parse_database_url(url)
    conn = mysql_connect(parsed, parsed.database, autocommit=True)
    try:
        with conn.cursor() as cursor:
            for name in names:
                for statement in split_statements((FIXTURES / name).read_text()):
                    cursor.execute(statement)
    finally:
        conn.close()


@pytest.fixture
def legacy_url() -> Iterator[str]:
    """The original service's database with the fixture's rows, in a database of its own."""
    urls = mysql_database_url()
    url = next(urls)
    load_script(url, "legacy_schema.sql", "legacy_data.sql")
    yield url
    urls.close()


@pytest.fixture
def empty_mysql_url() -> Iterator[str]:
    yield from mysql_database_url()


def cli_env(database_url: str, log_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLINK_", "BACKFILL_", "DATABASE_URL"))}
    env.update(DATABASE_URL=database_url, SYNC_LOG_DIR=str(log_root), LOG_LEVEL="WARNING", USE_HTTPS="false")
    return env


def old_files(log_root: Path) -> None:
    for name, data in ((OLD_NAME, OLD_LINES), (FOREIGN_NAME, FOREIGN_LINES)):
        (log_root / name).parent.mkdir(parents=True, exist_ok=True)
        (log_root / name).write_bytes(data)


def log_bytes(log_root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(log_root)): p.read_bytes() for p in sorted(log_root.glob("[0-9]*/*.log"))}


# --------------------------------------------------------------------------- the format


def test_old_sync_log_lines_are_read_field_by_field():
    readings = legacy_line_readings("2024-05-01 10:00:00 | device=5001 | sensors=2 | 11:12.5 | 12: 21.5 \r", 5001)
    assert [(r.sensor_id, str(r.recorded_at), r.value, r.sensor_timestamp) for r in readings] == [
        (11, "2024-05-01 10:00:00", "12.5", "2024-05-01 10:00:00"),
        (12, "2024-05-01 10:00:00", "21.5", "2024-05-01 10:00:00"),
    ]
    for line, reason in (
        ("yesterday | device=5001 | 11:1", "first field"),
        ("2024-05-01 10:00:00 | device=5002 | sensors=1 | 11:1", "device=5002"),
        ("2024-05-01 10:00:00 | device=5001 | sensors=3 | 11:1", "sensors=3 but has 1"),
        ("2024-05-01 10:00:00 | device=5001", "no SENSOR:VALUE"),
        ("2024-05-01 10:00:00 | temperature high", "neither key=value nor SENSOR:VALUE"),
    ):
        with pytest.raises(InvalidBody, match=reason):
            legacy_line_readings(line, 5001)


def test_a_legacy_event_keeps_its_source_through_the_line_format():
    source = {"table": "sensor_readings", "key": {"id": 7}, "sensorsId": 11}
    body = {"id": 7, "sensor_id": 1, "recorded_at": "2024-05-01 10:00:00", "value": "12.50", "re_val": None}
    event = Event("01a2", LEGACY, utc_now(), 5001, 385, body, source=source)
    decoded, _ = decode_line(encode_line(event, "0" * 64))
    assert decoded.source == source and decoded.body == body and decoded.request is None
    assert b'"body":{' in encode_line(event, "0" * 64) and encode_line(event, "0" * 64).endswith(b',"sensorsId":11}}')
    [reading] = legacy_readings(5001, body, source)
    assert (reading.sensor_id, reading.value, str(reading.recorded_at)) == (11, "12.50", "2024-05-01 10:00:00")
    assert legacy_readings(5001, {**body, "recorded_at": None}, source) == []  # lenient: no reading, no error


# --------------------------------------------------------------------------- the command


@pytest.mark.mysql
async def test_import_shows_in_read_api_and_history_verifies_and_runs_once(
    legacy_url, database_url, log_root, tmp_path, app_client
):
    old_files(log_root)
    env = cli_env(database_url, log_root)
    status, out, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", legacy_url)
    assert status == 1, err  # the fixture's four rows that cannot be placed
    for line in UNPLACED:
        assert line in err
    assert "devices: 3 rows, 2 imported, 0 already imported, 1 not imported" in out
    assert "sensors: 4 rows, 3 imported, 0 already imported, 1 not imported" in out
    assert "sensor_readings: 6 rows, 4 imported, 0 already imported, 2 not imported" in out
    assert "legacy-imported/5001/device5001-2024-05-01.log: 2 lines, 2 imported" in out
    assert "legacy-imported/5002/device5002-2024-05-01.log: 1 lines, 1 imported" in out
    assert "imported 12 legacy events; 4 not imported" in out

    # the old files moved whole, out of the log's way, with a record of the run
    assert not (log_root / OLD_NAME).exists() and not (log_root / FOREIGN_NAME).exists()
    assert (log_root / "legacy-imported" / OLD_NAME).read_bytes() == OLD_LINES
    assert (log_root / "legacy-imported/5002/device5002-2024-05-01.log").read_bytes() == FOREIGN_LINES
    [record_path] = (log_root / "legacy-imported").glob("import-*.json")
    record = orjson.loads(record_path.read_bytes())
    assert record["tables"]["sensor_readings"] == {"read": 6, "imported": 4, "alreadyImported": 0, "notImported": 2}
    assert record["imported"] == 12 and len(record["notImported"]) == 4
    assert {"table": "sensor_readings", "key": {"id": 6}, "reason": "it has no sensor (sensor_id is NULL)"} in (
        record["notImported"]
    )
    assert record["database"].startswith("mysql://") and "@" in record["database"]

    # the new log: legacy events with the rows and lines unchanged as bodies
    [new_log] = (log_root / "5001").glob("*.log")
    lines = [orjson.loads(raw) for raw in new_log.read_bytes().splitlines()]
    assert {line["type"] for line in lines} == {LEGACY}
    row_source = {"table": "sensor_readings", "key": {"id": 1}, "sensorsId": 11}
    row = next(line for line in lines if line["source"] == row_source)
    assert row["body"]["recorded_at"] == "2024-05-01 10:00:00" and row["body"]["numeric_value"] == "12.5000"
    assert row["source"]["sensorsId"] == 11 and row["userId"] == 385
    device = next(line for line in lines if line["source"].get("table") == "devices")
    assert device["body"]["lat"] == "31.230416" and device["body"]["user_id"] == "5f0c2b8e-1d7a-4c1e-9b7e-0a1b2c3d4e5f"
    text = next(line for line in lines if "file" in line["source"])
    assert text["body"] == {"line": OLD_LINES.decode().splitlines()[0]}
    assert text["source"] == {"file": "legacy-imported/5001/device5001-2024-05-01.log", "line": 1}

    status, out, err = await run_cli(env, tmp_path, "verify")
    assert status == 0 and out.startswith("OK: 2 files, 12 lines"), out + err

    before = log_bytes(log_root)
    status, out, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", legacy_url)
    assert status == 1 and all(line in err for line in UNPLACED)  # still not placeable, said again
    assert "sensor_readings: 6 rows, 0 imported, 4 already imported, 2 not imported" in out
    assert "legacy-imported/5001/device5001-2024-05-01.log: 2 lines, 0 imported, 2 already imported" in out
    assert "imported 0 legacy events" in out and "moved" not in out
    assert log_bytes(log_root) == before
    assert len(list((log_root / "legacy-imported").glob("import-*.json"))) == 2

    client = await app_client()
    latest = await (await client.get("/api/users/385/devices/5001/latest")).json()
    assert latest["device"]["deviceName"] == "Tank north" and latest["device"]["lat"] == "31.230416"
    sensors = {s["sensorId"]: s for s in latest["sensors"]}
    assert sensors[11]["unit"] == "L" and sensors[11]["latest"]["value"] == "12.7"  # the 10:10 line is newest
    assert sensors[11]["latest"]["recordedAt"] == "2024-05-01T10:10:00"
    history = await (await client.get("/api/users/385/devices/5001/history?sensorId=11")).json()
    [sensor] = history["sensors"]
    # first logged wins on (device, sensor, reading time): the database row of 10:00, not the line's copy
    assert [(r["recordedAt"], r["value"]) for r in sensor["history"]] == [
        ("2024-05-01T10:10:00", "12.7"), ("2024-05-01T10:05:00", "12.60"), ("2024-05-01T10:00:00", "12.50"),
    ]  # fmt: skip
    csv = await (await client.get("/api/users/385/devices/5001/history?sensorId=11&format=csv")).text()
    assert "12.60" in csv and "12.7" in csv
    other = await (await client.get("/api/users/121025/devices/5002/latest")).json()
    assert other["sensors"][0]["latest"]["value"] == "2.5"  # the line of 11:10 is newer than the row of 11:00
    coverage = await (await client.get("/api/users/385/devices/5001/coverage?day=2024-05-01")).json()
    assert {s["sensorId"]: s["readings"]["legacy"] for s in coverage["sensors"]} == {11: 3, 12: 2}


@pytest.mark.mysql
async def test_bad_input_is_a_clear_error_and_changes_nothing(empty_mysql_url, sqlite_url, log_root, tmp_path):
    old_files(log_root)
    env = cli_env(sqlite_url, log_root)
    status, _, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", "mysql://root@127.0.0.1:1/tlink")
    assert status == 2 and "cannot read the old database mysql://root@127.0.0.1:1/tlink" in err
    assert "nothing was changed" in err
    status, _, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", empty_mysql_url)
    assert status == 2 and "has no table users: not the original service's database" in err
    status, _, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", empty_mysql_url, "--logs", "nowhere")
    assert status == 2 and "--logs nowhere is not a folder" in err
    status, _, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", "sqlite:///old.db")
    assert status == 2 and "--mysql must be a mysql:// URL" in err
    same = cli_env(empty_mysql_url, log_root)
    status, _, err = await run_cli(same, tmp_path, "import-legacy", "--mysql", empty_mysql_url)
    assert status == 2 and "--mysql names the new service's own database (DATABASE_URL)" in err
    assert (log_root / OLD_NAME).read_bytes() == OLD_LINES and (log_root / FOREIGN_NAME).read_bytes() == FOREIGN_LINES
    assert not (log_root / "legacy-imported").exists()


@pytest.mark.mysql
async def test_garbage_lines_are_reported_and_kept_and_the_rest_imported(legacy_url, sqlite_url, log_root, tmp_path):
    garbage = OLD_LINES + b"\n" + b"2024-05-01 10:20:00 | device=5001 | sensors=2 | 11:12.8\n" + b"\xff\xfe\x00\x01\n"
    (log_root / "5001").mkdir(parents=True)
    (log_root / OLD_NAME).write_bytes(garbage)
    elsewhere = tmp_path / "old-logs"
    (elsewhere / "5009").mkdir(parents=True)  # a device the old database does not know
    (elsewhere / "5009/device5009-2024-05-01.log").write_bytes(b"2024-05-01 10:00:00 | device=5009 | 1:1\n")
    env = cli_env(sqlite_url, log_root)
    status, out, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", legacy_url)
    assert status == 1
    name = "legacy-imported/5001/device5001-2024-05-01.log"
    assert f"not imported: {name} line 3: not a line of the old sync log: " in err  # the empty line
    assert f"not imported: {name} line 4: not a line of the old sync log: the line says sensors=2 but has 1" in err
    assert f"not imported: {name} line 5: not UTF-8 text (4 bytes)" in err
    assert f"{name}: 5 lines, 2 imported, 0 already imported, 3 not imported" in out
    assert (log_root / name).read_bytes() == garbage  # kept whole: nothing lost

    status, out, err = await run_cli(env, tmp_path, "import-legacy", "--mysql", legacy_url, "--logs", str(elsewhere))
    assert status == 1
    assert (
        "not imported: legacy-imported/5009/device5009-2024-05-01.log line 1: device 5009 is not in the old devices"
        " table, so its owner is unknown"
    ) in err
    assert not (elsewhere / "5009/device5009-2024-05-01.log").exists()
    assert (log_root / "legacy-imported/5009/device5009-2024-05-01.log").exists()
    status, out, err = await run_cli(env, tmp_path, "verify")
    assert status == 0, out + err


@pytest.mark.mysql
async def test_refuses_while_the_service_runs(legacy_url, app_client, make_settings, log_root, tmp_path):
    old_files(log_root)
    await app_client()  # holds the log root; its start-up moved the old file aside as .foreign
    settings = make_settings()
    status, _, err = await run_cli(cli_env(settings.DATABASE_URL, log_root), tmp_path, "import-legacy",
                                   "--mysql", legacy_url)  # fmt: skip
    assert status == 1 and "stop the service first" in err
    assert (log_root / (OLD_NAME + ".foreign")).read_bytes() == OLD_LINES
