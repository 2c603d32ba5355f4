"""Hostile input to the read API and the operations around it: never a 500, never a silent acceptance.

Integer parameters and path ids have documented maxima (a 400 naming the parameter above
them), times and days must be real dates, and the OpenAPI document's parameter schemas
accept exactly what the service accepts. Around the API: API_KEYS with no key in it stops
start-up, /api/ready answers anonymous callers without the database's own messages, a
read-only `verify` creates no database and fails when there is nothing to verify, and the
database's absence at start-up, its loss and its return are logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
from openapi_schema_validator import OAS31Validator

from ops.private_mariadb import available as mariadbd_available
from ops.private_mariadb import query as mysql_query
from projections.readings import MAX_ID
from service.config import SettingsError, load_settings
from service.http import query
from service.http.app import create_app
from service.http.keys import SERVICES
from tests.conftest import fixture_bytes
from tests.test_api_openapi import api_get, document

SAMPLE = fixture_bytes("sample_push.json")
USER, DEVICE = 385, 2864
TLINK_PUSH = str(Path(sys.executable).with_name("tlink-push"))
DEVICES = f"/api/users/{USER}/devices"
HISTORY = f"/api/users/{USER}/devices/{DEVICE}/history"
EVENTS = f"/api/users/{USER}/devices/{DEVICE}/events"
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
HUGE = "999999999999999999"  # 18 digits: an integer, far above every maximum

HOSTILE = [
    (f"{DEVICES}?page={HUGE}", "page"),  # was a 500: SQLite OverflowError, MariaDB syntax error
    (f"{DEVICES}?page={query.MAX_PAGE + 1}", "page"),
    (f"{EVENTS}?page={HUGE}", "page"),
    (f"{DEVICES}?pageSize={HUGE}", "pageSize"),
    (f"{EVENTS}?pageSize={query.MAX_PAGE + 1}", "pageSize"),
    (f"{DEVICES}?historyLimit={HUGE}", "historyLimit"),
    (f"{HISTORY}?historyLimit={HUGE}", "historyLimit"),
    (f"/api/users/{MAX_ID + 1}/devices", "userId"),
    (f"/api/users/{USER}/devices/{MAX_ID + 1}/latest", "deviceId"),
    (f"/api/users/{USER}/devices/{MAX_ID + 1}/events", "deviceId"),
    (f"{DEVICES}?deviceId={MAX_ID + 1}", "deviceId"),
    (f"{DEVICES}?startTime=0000-00-00 00:00:00", "startTime"),
    (f"{HISTORY}?startTime=2026-02-30 00:00:00", "startTime"),
    (f"{HISTORY}?endTime=2023-02-29T12:00:00", "endTime"),
    (f"{HISTORY}?endTime=2026-01-01 24:00:00", "endTime"),
    (f"{HISTORY}?startTime=0999-12-31 23:59:59", "startTime"),
    (f"{HISTORY}?startTime=%202026-01-01%2000:00:00", "startTime"),  # a blank around: not the documented pattern
    (f"{HISTORY}?startTime=２０２６-01-01 00:00:00", "startTime"),  # fullwidth digits
    (f"{EVENTS}?day=0000-00-00", "day"),
    (f"{EVENTS}?day=2025-02-29", "day"),
    (f"{EVENTS}?day=2026-01-01%0A", "day"),
]


async def client_with_a_device(app_client: Any, **settings: Any) -> Any:
    client = await app_client(**settings)
    resp = await client.post("/api/webhooks/tlink", data=SAMPLE)
    assert resp.status == 200, await resp.text()
    return client


@pytest.mark.parametrize(("url", "name"), HOSTILE)
async def test_hostile_values_are_a_400_naming_the_parameter(app_client, url, name):
    client = await client_with_a_device(app_client)
    body = await api_get(client, url, status=400)
    assert body["error"].startswith(name), body


@pytest.mark.parametrize(
    "url",
    [f"{DEVICES}?page={query.MAX_PAGE}", f"{EVENTS}?page={query.MAX_PAGE}&pageSize={query.MAX_PAGE}",
     f"{DEVICES}?deviceId={MAX_ID}", f"/api/users/{MAX_ID}/devices", f"{HISTORY}?startTime=2024-02-29 23:59:59",
     f"{HISTORY}?endTime=9999-12-31T23:59:59&startTime=1000-01-01 00:00:00", f"{EVENTS}?day=2000-02-29"],
)  # fmt: skip
async def test_the_maxima_themselves_are_accepted(app_client, url):
    client = await client_with_a_device(app_client)
    resp = await client.get(url)
    assert resp.status in (200, 404), await resp.text()  # MAX_ID as an id: no such user or device


# ---------------------------------------------------------------- the document says the same


def parameters() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for template, operations in document()["paths"].items():
        for operation in operations.values():
            found.extend((template, p) for p in operation["parameters"])
    return found


def test_every_integer_parameter_states_minimum_and_maximum_and_every_string_a_pattern_or_enum():
    listed = parameters()
    assert listed
    for template, param in listed:
        schema = param["schema"]
        OAS31Validator.check_schema(schema)
        if schema["type"] == "array":  # a repeatable parameter: each value is held to the same rules
            schema = schema["items"]
        if schema["type"] == "integer":
            assert "minimum" in schema and "maximum" in schema, (template, param["name"])
        else:
            assert "pattern" in schema or "enum" in schema, (template, param["name"])
    by_name = {p["name"]: p["schema"].get("items", p["schema"]) for _, p in listed}
    assert by_name["page"]["maximum"] == by_name["pageSize"]["maximum"] == query.MAX_PAGE
    assert by_name["userId"]["maximum"] == by_name["deviceId"]["maximum"] == MAX_ID


def test_the_date_patterns_admit_exactly_the_real_dates():
    day = OAS31Validator(query.DAY.schema)
    time = OAS31Validator(query.START_TIME.schema)
    years = [*range(1000, 1004), 1100, 1200, 1600, 1700, 1800, *range(1896, 2105), 2400, 2500, *range(9996, 10000)]
    for year in years:
        for month in range(14):
            for day_no in range(33):
                text = f"{year:04d}-{month:02d}-{day_no:02d}"
                try:
                    real = bool(date(year, month, day_no))
                except ValueError:
                    real = False
                assert day.is_valid(text) is real, text
                assert time.is_valid(f"{text} 23:59:59") is real and time.is_valid(f"{text}T00:00:00") is real, text
    for text in ["0999-12-31", "0000-00-00", "10000-01-01", "２０２６-01-01", " 2026-01-01"]:
        assert not day.is_valid(text), text
    # A pattern is an ECMA-262 regex, whose $ is the end of the text (Python's re also lets a
    # final newline through; schemathesis and the service go by ECMA-262).
    assert not jsonschema_rs.validator_for(query.DAY.schema).is_valid("2026-01-01\n")
    for clock in ["24:00:00", "23:60:00", "23:59:60", "1:00:00"]:
        assert not time.is_valid(f"2026-01-01 {clock}"), clock


PROBES = {
    "page": [0, 1, query.MAX_PAGE, query.MAX_PAGE + 1, int(HUGE)],
    "pageSize": [0, 1, 100, 101, query.MAX_PAGE, query.MAX_PAGE + 1, int(HUGE)],
    "historyLimit": [-1, 0, 1000, 1001, int(HUGE)],
    "deviceId": [0, 1, MAX_ID, MAX_ID + 1],
    "startTime": ["2026-01-01 00:00:00", "2026-01-01T00:00:00", "0000-00-00 00:00:00", "2026-02-30 00:00:00",
                  "2024-02-29 00:00:00", " 2026-01-01 00:00:00", "2026-01-01 00:00:00 ", "1000-01-01 00:00:00",
                  "0999-12-31 23:59:59", "2026-1-01 00:00:00"],
    "endTime": ["9999-12-31 23:59:59", "2026-04-31 00:00:00", "2026-04-30 00:00:00"],
    "day": ["2026-01-01", "0000-00-00", "2025-02-29", "2024-02-29", "2026-13-01", "2026-01-1"],
    "type": ["push", "sync", "sync_failed", "pushes", ""],
    "before": ["2026-01-01 00:00:00", "2026-01-01T00:00:00", "1000-01-01 00:00:00", "0999-12-31 23:59:59",
               "2026-02-30 00:00:00", "2026-01-01 00:00:00Z", "2026-01-01T00:00:00+08:00"],
    "sensorId": [0, 1, MAX_ID, MAX_ID + 1],
    "format": ["json", "csv", "CSV", "xml", ""],
}  # fmt: skip


@pytest.mark.parametrize("path", [DEVICES, HISTORY, EVENTS])
async def test_the_document_and_the_service_accept_the_same_values(app_client, path):
    """What schemathesis checks both ways: a value the schema accepts is not refused, one it refuses is a 400."""
    client = await client_with_a_device(app_client)
    operation = document()["paths"][path.replace(str(USER), "{userId}").replace(str(DEVICE), "{deviceId}")]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "query"}
    checked = 0
    for name, schema in params.items():
        for value in PROBES[name]:
            # a repeatable parameter (an array) given once
            valid = OAS31Validator(schema).is_valid([value] if schema["type"] == "array" else value)
            resp = await client.get(path, params={name: str(value)})
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            # 404: no such device (or sensor)
            assert resp.status in ((200, 404) if valid else (400,)), (name, value, body)
            if not valid:
                assert body["error"].startswith(name), body
            checked += 1
    assert checked >= 15


# ---------------------------------------------------------------- API_KEYS with no key in it


@pytest.mark.parametrize("value", [",", "   ", " , ,"])
def test_api_keys_without_a_key_is_a_settings_error(monkeypatch, value):
    monkeypatch.setenv("API_KEYS", value)
    with pytest.raises(SettingsError, match="API_KEYS") as caught:
        load_settings()
    assert "\n" not in str(caught.value)
    with pytest.raises(SettingsError, match="API_KEYS"):
        load_settings(API_KEYS=[" ", ""])


def test_empty_api_keys_is_still_an_open_read_api(monkeypatch):
    monkeypatch.setenv("API_KEYS", "")
    assert load_settings().API_KEYS == []
    monkeypatch.setenv("API_KEYS", "k1,,k2 ")
    assert load_settings().API_KEYS == ["k1", "k2"]


def test_serve_refuses_to_start_with_api_keys_of_commas(tmp_path):
    env = {"API_KEYS": ",", "PATH": "/usr/bin:/bin", "USE_HTTPS": "false", "PORT": "1", **PYTHONPATH}
    result = subprocess.run(
        [TLINK_PUSH, "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tlink-push: invalid setting API_KEYS: ")


# ---------------------------------------------------------------- /api/ready tells anonymous callers little


UNREACHABLE = "mysql://root@127.0.0.1:1/nothing"


@pytest.mark.parametrize("keys", [[], ["k1"]])
async def test_ready_never_shows_the_database_message_but_logs_it(aiohttp_client, log_root, caplog, keys):
    log_root.mkdir()
    settings = load_settings(DATABASE_URL=UNREACHABLE, SYNC_LOG_DIR=log_root, USE_HTTPS=False, API_KEYS=keys)
    client = await aiohttp_client(create_app(settings))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tlink.health"):
        for headers in ({}, {"Authorization": "Bearer k1"}, {}):
            body = await api_get(client, "/api/ready", status=503, headers=headers)
            text = orjson.dumps(body).decode()
            assert body["reasons"] == ["database unreachable: cannot connect (the service log has the details)"]
            assert "Can't connect" not in text and "127.0.0.1" not in text and "nothing" not in text, text
    logged = [r for r in caplog.records if r.name == "tlink.health"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING  # once, not once a probe
    assert "Can't connect" in logged[0].getMessage() and "127.0.0.1" in logged[0].getMessage()


async def test_ready_details_only_for_a_request_with_a_key(app_client, log_root):
    client = await client_with_a_device(app_client, API_KEYS=["k1"])
    projector = client.server.app[SERVICES].projector
    projector.failed = RuntimeError("(1054, \"Unknown column 'secret_column' in 'field list'\")")
    anonymous = await api_get(client, "/api/ready", status=503)
    keyed = await api_get(client, "/api/ready", status=503, headers={"Authorization": "Bearer k1"})
    wrong = await api_get(client, "/api/ready", status=503, headers={"Authorization": "Bearer nope"})
    assert anonymous == wrong
    assert anonymous["reasons"] == ["projector stopped: the projector stopped on an error (the service log has it)"]
    assert "secret_column" not in orjson.dumps(anonymous).decode()
    assert keyed["reasons"] == [f"projector stopped: {projector.failed}"]


async def test_a_stopped_device_s_reason_is_generic_without_a_key(app_client, log_root):
    from tests.test_device_stop import BAD, GOOD, push, write_log, year_999

    ids = await write_log(log_root, [year_999(BAD), push(GOOD, "2026-05-01 10:00:00", "5.0")])
    client = await app_client(API_KEYS=["k1"])
    key = {"Authorization": "Bearer k1"}
    for _ in range(200):
        if client.server.app[SERVICES].projector.stopped:
            break
        await asyncio.sleep(0.02)
    [anonymous] = (await api_get(client, "/api/ready"))["checks"]["projection"]["stoppedDevices"]
    [keyed] = (await api_get(client, "/api/ready", headers=key))["checks"]["projection"]["stoppedDevices"]
    assert {k: v for k, v in anonymous.items() if k != "reason"} == {k: v for k, v in keyed.items() if k != "reason"}
    assert (anonymous["deviceId"], anonymous["line"], anonymous["eventId"]) == (BAD, 1, ids[0])
    assert anonymous["reason"] == "the line cannot be applied (the service log has the details)"
    assert "0999-06-01 10:00:00" in keyed["reason"]


async def test_the_log_root_path_is_shown_only_with_a_key(app_client, log_root):
    client = await app_client(API_KEYS=["k1"])
    log_root.rename(log_root.with_name("gone"))
    anonymous = await api_get(client, "/api/ready", status=503)
    keyed = await api_get(client, "/api/ready", status=503, headers={"Authorization": "Bearer k1"})
    assert anonymous["reasons"][0] == "event log: log root does not exist"
    assert keyed["reasons"][0] == f"event log: log root {log_root} does not exist"


# ---------------------------------------------------------------- verify is read-only


def run_verify(cwd: Path, url: str, logs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "SYNC_LOG_DIR": str(logs), **PYTHONPATH}
    return subprocess.run(
        [TLINK_PUSH, "verify", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )  # fmt: skip


def test_verify_with_nothing_to_verify_fails_naming_the_folder_and_creates_no_database(tmp_path):
    url = f"sqlite:///{tmp_path}/data/tlink.db"
    result = run_verify(tmp_path, url, tmp_path / "logs")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"nothing to verify: no log files in {tmp_path / 'logs'}" in result.stdout
    assert "OK" not in result.stdout
    assert not (tmp_path / "data").exists()


def test_verify_without_a_database_checks_the_chains_and_creates_none(tmp_path):
    logs = tmp_path / "logs"
    asyncio.run(_log_one_push(logs))
    result = run_verify(tmp_path, f"sqlite:///{tmp_path}/data/tlink.db", logs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no database at" in result.stdout and "OK: 1 files, 1 lines" in result.stdout
    assert not (tmp_path / "data").exists()
    relative = run_verify(tmp_path, "sqlite:///tlink.db", logs)
    assert relative.returncode == 0 and not (tmp_path / "tlink.db").exists()


async def _log_one_push(root: Path) -> None:
    from eventlog.events import PUSH
    from eventlog.store import LogStore

    store = LogStore(root)
    await store.open()
    try:
        await store.append(store.new_event(PUSH, DEVICE, USER, orjson.loads(SAMPLE)))
    finally:
        await store.close()


@pytest.mark.mysql
def test_verify_creates_no_tables_in_an_empty_mysql_database(tmp_path, mysql_url):
    logs = tmp_path / "logs"
    asyncio.run(_log_one_push(logs))
    result = run_verify(tmp_path, mysql_url, logs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "holds no tables of this service" in result.stdout
    assert mysql_query(mysql_url, "SHOW TABLES") == []


@pytest.fixture
def mysql_url():
    from tests.conftest import mysql_database_url

    yield from mysql_database_url()


async def test_verify_still_compares_with_the_database_the_service_wrote(app_client, log_root, database_url, tmp_path):
    client = await client_with_a_device(app_client)
    await client.close()
    result = run_verify(tmp_path, database_url, log_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 1 files, 1 lines" in result.stdout and "note:" not in result.stdout
    for path in (log_root / str(DEVICE)).glob("*.log"):
        path.unlink()
    missing = run_verify(tmp_path, database_url, log_root)
    assert missing.returncode == 1 and "missing, but the database recorded 1 lines" in missing.stdout


# ---------------------------------------------------------------- the database's absence and return are logged


async def test_start_up_with_an_unreachable_database_logs_an_error(aiohttp_client, log_root, caplog):
    settings = load_settings(DATABASE_URL=UNREACHABLE, SYNC_LOG_DIR=log_root, USE_HTTPS=False, API_KEYS=[])
    with caplog.at_level(logging.INFO, logger="tlink.projector"):
        client = await aiohttp_client(create_app(settings))
        client.server.app[SERVICES].projector.retry_seconds = 0.05
        await asyncio.sleep(0.3)  # a few retries: still one line
    errors = [r for r in caplog.records if r.name == "tlink.projector" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "database cannot be reached at start-up" in message and "Can't connect" in message


async def wait_for(predicate: Any, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def projector_lines(caplog: Any) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tlink.projector"]


@pytest.mark.mysql
@pytest.mark.slow
@pytest.mark.skipif(not mariadbd_available(), reason="no mariadbd")
async def test_the_database_down_at_start_lost_and_regained_is_logged(aiohttp_client, mariadb, tmp_path, caplog):
    mariadb.kill()
    settings = load_settings(DATABASE_URL=mariadb.url, SYNC_LOG_DIR=tmp_path / "logs", USE_HTTPS=False, API_KEYS=[])
    caplog.set_level(logging.INFO, logger="tlink.projector")
    client = await aiohttp_client(create_app(settings))
    projector = client.server.app[SERVICES].projector
    projector.retry_seconds = 0.1
    [(level, message)] = projector_lines(caplog)
    assert level == logging.ERROR and "database cannot be reached at start-up" in message

    mariadb.start()
    await wait_for(lambda: projector.available)
    assert any(lv == logging.INFO and "database reachable again" in m for lv, m in projector_lines(caplog))

    caplog.clear()
    mariadb.kill()
    resp = await client.post("/api/webhooks/tlink", data=SAMPLE)
    assert resp.status == 200
    await wait_for(lambda: not projector.available)
    lost = [m for lv, m in projector_lines(caplog) if lv == logging.ERROR]
    assert len(lost) == 1 and "database connection lost" in lost[0], projector_lines(caplog)

    mariadb.start()
    await wait_for(lambda: projector.available and projector.behind == 0)
    assert [m for lv, m in projector_lines(caplog) if "reachable again" in m] == [
        "database reachable again; the read models catch up with the log"
    ]
    assert os.path.exists(tmp_path / "logs")
