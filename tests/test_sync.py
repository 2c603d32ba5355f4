"""The TLINK sync job on the real app against the fake TLINK server, on both database backends."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from eventlog.events import SYNC, SYNC_FAILED
from eventlog.files import device_days, device_ids, log_path
from eventlog.retention import sync_failures_path
from eventlog.store import lock_root
from ops.fake_tlink import FAKE_TLINK_STATE, SENSOR_DATA_PATH, FakeTlinkState, make_fake_tlink_app
from projections.db import connect
from service.cli.main import main
from service.http.keys import SCHEDULER, SERVICES, SETTINGS, SYNC_JOB, SYNC_STATS
from service.jobs.scheduler import RETENTION_JOB_ID, SYNC_JOB_ID, ExclusiveJob, new_scheduler, schedule
from service.jobs.sync import FAILED, OK, PARTIAL, SyncStats, build_client, build_sync
from tests.conftest import fake_tlink_settings, run_cli

FIXTURES = Path(__file__).parent / "fixtures"
USER = 385
PAGE_SIZE = 2
DEVICES = [3000, 3001, 3002, 3003, 3004]
READINGS_PER_SYNC = 15  # three sensors with an updateDate on each of five devices


@dataclass
class Fake:
    server: TestServer
    state: FakeTlinkState
    probe: dict[str, int]

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def pages_asked(self) -> list[int]:
        return [call.body["currPage"] for call in self.state.api_calls]


def concurrency_probe(app: web.Application) -> dict[str, int]:
    """Counts API requests in flight at the fake, and the most seen at once."""
    probe = {"now": 0, "max": 0}

    @web.middleware
    async def measure(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != SENSOR_DATA_PATH:
            return await handler(request)
        probe["now"] += 1
        probe["max"] = max(probe["max"], probe["now"])
        try:
            return await handler(request)
        finally:
            probe["now"] -= 1

    app.middlewares.append(measure)
    return probe


async def start_fake(aiohttp_server, fixtures: Path = FIXTURES) -> Fake:
    app = make_fake_tlink_app(fixtures, state=FakeTlinkState())
    probe = concurrency_probe(app)
    return Fake(await aiohttp_server(app), app[FAKE_TLINK_STATE], probe)


@pytest.fixture
async def fake(aiohttp_server) -> Fake:
    return await start_fake(aiohttp_server)


def tlink_settings(fake: Fake, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        **fake_tlink_settings(fake.url, USER),
        "TLINK_SYNC_ENABLED": True,
        "TLINK_SYNC_PAGE_SIZE": PAGE_SIZE,
        "TLINK_SYNC_INTERVAL_SECONDS": 3600,  # only the start-up run, then runs by hand
    }
    values.update(overrides)
    return values


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def finished_runs(stats: SyncStats) -> int:
    return sum(stats.runs.values())


async def start_synced_app(app_client, fake: Fake, **overrides: Any) -> tuple[Any, web.Application]:
    """The app after its start-up sync run finished."""
    client = await app_client(**tlink_settings(fake, **overrides))
    app = client.server.app
    await eventually(lambda: finished_runs(app[SYNC_STATS]) >= 1)
    return client, app


def log_events(root: Path, device_id: int) -> list[dict[str, Any]]:
    lines = []
    for day in device_days(root, device_id):
        lines += [orjson.loads(raw) for raw in log_path(root, device_id, day).read_bytes().splitlines()]
    return lines


def fixture_devices() -> dict[int, dict[str, Any]]:
    devices = {}
    for page in (1, 2, 3):
        for device in json.loads((FIXTURES / f"sync_page{page}.json").read_text(encoding="utf-8"))["dataList"]:
            devices[device["id"]] = device
    return devices


async def count(app: web.Application, sql: str, params: list[Any] | None = None) -> int:
    return int((await app[SERVICES].db.fetchall(sql, params or []))[0][0])


# --------------------------------------------------------------------------- a full sync


async def test_three_pages_are_synced_into_log_and_read_models(app_client, fake, log_root, caplog):
    caplog.set_level(logging.INFO, logger="tlink.sync")
    _, app = await start_synced_app(app_client, fake)
    stats = app[SYNC_STATS]

    assert fake.pages_asked() == [1, 2, 3]
    assert {call.body["pageSize"] for call in fake.state.api_calls} == {PAGE_SIZE}
    assert stats.runs == {OK: 1, PARTIAL: 0, FAILED: 0}
    assert (stats.devices, stats.readings, stats.failures) == (5, READINGS_PER_SYNC, 0)
    expected = fixture_devices()
    assert device_ids(log_root) == DEVICES
    for device_id in DEVICES:
        [line] = log_events(log_root, device_id)
        assert line["type"] == SYNC and line["userId"] == USER and line["deviceId"] == device_id
        assert line["body"] == expected[device_id]  # the vendor object, unchanged
    rows = await app[SERVICES].db.fetchall(
        "SELECT device_id, device_name, device_no, tlink_user_id, lat, lng FROM devices ORDER BY device_id"
    )
    assert [(int(r[0]), r[1], r[2], int(r[3])) for r in rows] == [
        (d, expected[d]["deviceName"], expected[d]["deviceNo"], USER) for d in DEVICES
    ]
    assert (rows[0][4], rows[0][5]) == (expected[3000]["lat"], expected[3000]["lng"])
    sensors = await app[SERVICES].db.fetchall(
        "SELECT sensor_id, sensor_name, unit, latest_value, latest_recorded_at FROM sensors WHERE device_id = %s"
        " ORDER BY sensor_id",
        [3000],
    )
    assert [(int(s[0]), s[1], s[2]) for s in sensors] == [
        (30001, "Oil height", "mm"), (30002, "Water height", "mm"), (30003, "Temperature", "°C"),
        (30004, "Leak switch", ""),
    ]  # fmt: skip
    assert sensors[0][3] == "1500.0" and sensors[3][4] is None  # updateDate null: metadata, no reading
    assert await count(app, "SELECT COUNT(*) FROM sensor_readings") == READINGS_PER_SYNC

    device_lines = [r for r in caplog.records if r.name == "tlink.sync" and r.getMessage() == "TLINK device synced"]
    assert [(r.user, r.device, r.page, r.sensors, r.readings) for r in device_lines] == [
        (USER, 3000, 1, 4, 3), (USER, 3001, 1, 4, 3), (USER, 3002, 2, 4, 3), (USER, 3003, 2, 4, 3),
        (USER, 3004, 3, 4, 3),
    ]  # fmt: skip
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLINK sync completed")]
    assert re.fullmatch(
        r"TLINK sync completed users=1 devices=5 unchanged=0 readings=15 failures=0 seconds=\d+\.\d+", summary
    )


async def test_a_second_identical_sync_appends_nothing_and_finds_no_new_reading(app_client, fake, log_root):
    _, app = await start_synced_app(app_client, fake)
    seen = []
    app[SYNC_STATS].observers.append(seen.append)

    report = await app[SYNC_JOB].run()

    assert seen == [report]
    assert (report.devices, report.unchanged, report.readings, report.failures, report.outcome) == (0, 5, 0, 0, OK)
    assert [u.pages for u in report.users] == [3]
    assert await count(app, "SELECT COUNT(*) FROM sensor_readings") == READINGS_PER_SYNC
    assert [len(log_events(log_root, d)) for d in DEVICES] == [1] * 5  # tests/test_sync_unchanged.py: the rest
    assert app[SYNC_STATS].readings == READINGS_PER_SYNC
    assert (app[SYNC_STATS].devices, app[SYNC_STATS].unchanged) == (5, 5)


async def test_names_and_units_reach_the_latest_endpoint(app_client, fake):
    client, app = await start_synced_app(app_client, fake)
    if not any(getattr(r.resource, "canonical", "").endswith("/latest") for r in app.router.routes()):
        pytest.skip("no /latest route in this build")

    resp = await client.get(f"/api/users/{USER}/devices/3000/latest")

    assert resp.status == 200
    answer = await resp.json()
    assert answer["device"]["deviceName"] == "Tank 1" and answer["device"]["deviceNo"] == "ATG00003000"
    sensors = {s["sensorId"]: s for s in answer["sensors"]}
    assert sensors[30003]["sensorName"] == "Temperature" and sensors[30003]["unit"] == "°C"
    assert sensors[30001]["latest"]["value"] == "1500.0"
    assert sensors[30001]["latest"]["recordedAt"] == "2026-11-27T09:15:00"
    assert sensors[30004]["latest"] is None


# --------------------------------------------------------------------------- tokens


async def test_token_is_refreshed_before_it_expires(app_client, fake):
    fake.state.expires_in = 2  # the client renews once half of it has passed
    _, app = await start_synced_app(app_client, fake)
    await asyncio.sleep(1.2)

    report = await app[SYNC_JOB].run()

    assert report.outcome == OK
    assert fake.state.grants == ["password", "refresh_token"]
    first, second = fake.state.issued_tokens
    assert fake.state.tokens_seen == [first] * 3 + [second] * 3  # no call was refused and retried
    assert app[SYNC_STATS].token_refreshes == 2
    assert app[SYNC_STATS].token_grants == {"password": 1, "refresh_token": 1}


async def test_a_401_renews_the_token_and_the_sync_succeeds(app_client, fake):
    fake.state.fail_next_api_with_401 = 1

    _, app = await start_synced_app(app_client, fake)

    stats = app[SYNC_STATS]
    assert stats.runs[OK] == 1 and stats.devices == 5 and stats.failures == 0
    assert fake.pages_asked() == [1, 1, 2, 3]
    assert fake.state.grants == ["password", "refresh_token"]
    assert stats.token_refreshes == 2


# --------------------------------------------------------------------------- failures


async def test_flag_01_is_recorded_and_the_next_run_succeeds(app_client, fake, log_root):
    fake.state.flag01 = True
    client, app = await start_synced_app(app_client, fake)
    stats = app[SYNC_STATS]

    assert stats.runs == {OK: 0, PARTIAL: 0, FAILED: 1} and stats.failures == 1 and stats.last_outcome == FAILED
    assert device_ids(log_root) == []
    [record] = read_failures(log_root)
    assert record["userId"] == USER and record["page"] == 1
    assert "flag '01'" in record["error"] and "page size too large" in record["error"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["at"])
    assert (await client.get("/api/health")).status == 200
    assert app[SCHEDULER].get_job(SYNC_JOB_ID) is not None

    fake.state.flag01 = False
    report = await app[SYNC_JOB].run()

    assert report.outcome == OK and report.devices == 5
    assert stats.runs == {OK: 1, PARTIAL: 0, FAILED: 1}


async def test_a_timeout_is_a_failure_and_the_next_run_succeeds(app_client, fake, log_root):
    fake.state.delay_seconds = 1.0
    _, app = await start_synced_app(app_client, fake, TLINK_HTTP_TIMEOUT=0.2)

    [record] = read_failures(log_root)
    assert "timed out after 0.2 s" in record["error"]
    assert app[SYNC_STATS].runs[FAILED] == 1

    fake.state.delay_seconds = 0
    assert (await app[SYNC_JOB].run()).outcome == OK


def read_failures(root: Path) -> list[dict[str, Any]]:
    path = sync_failures_path(root, datetime.now(UTC).strftime("%Y-%m-%d"))
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def broken_fixtures(tmp_path) -> Path:
    """Page 2's device 3003 has a sensorsList that is no list; page 3's device has no id."""
    folder = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, folder)
    for page, change in ((2, lambda d: d[1].update(sensorsList=5)), (3, lambda d: d[0].pop("id"))):
        path = folder / f"sync_page{page}.json"
        doc = json.loads(path.read_text(encoding="utf-8"))
        change(doc["dataList"])
        path.write_text(json.dumps(doc), encoding="utf-8")
    return folder


async def test_bad_device_objects_are_recorded_where_they_belong(app_client, aiohttp_server, broken_fixtures, log_root):
    fake = await start_fake(aiohttp_server, broken_fixtures)
    _, app = await start_synced_app(app_client, fake)

    stats = app[SYNC_STATS]
    assert stats.runs[PARTIAL] == 1 and stats.devices == 3 and stats.failures == 2
    assert device_ids(log_root) == [3000, 3001, 3002, 3003]
    [line] = log_events(log_root, 3003)
    assert line["type"] == SYNC_FAILED and line["userId"] == USER
    body = line["body"]
    assert body["userId"] == USER and body["page"] == 2 and "sensorsList is not a list" in body["error"]
    assert body["device"]["id"] == 3003 and body["device"]["sensorsList"] == 5
    assert await count(app, "SELECT COUNT(*) FROM devices") == 3
    assert await count(app, "SELECT COUNT(*) FROM events WHERE type = %s", [SYNC_FAILED]) == 1
    [record] = read_failures(log_root)
    assert record["page"] == 3 and "usable id" in record["error"] and record["device"]["deviceName"] == "Tank 5"


# --------------------------------------------------------------------------- never two at once


async def test_runs_never_overlap_when_a_run_outlasts_the_interval(app_client, fake):
    client = await app_client()  # the app's own sync is off: this test schedules one every 0.2 s
    app = client.server.app
    fake.state.delay_seconds = 0.25  # a run takes three calls: 0.75 s
    stats = SyncStats()
    settings = app[SETTINGS].model_copy(update=tlink_settings(fake, TLINK_SYNC_USER_IDS=[USER]))
    tlink = build_client(settings, client.session, stats)
    sync = build_sync(settings, tlink, app[SERVICES].ingestor, app[SERVICES].db, stats)
    job = ExclusiveJob(SYNC_JOB_ID, sync.run, on_skip=lambda: None)
    scheduler = new_scheduler(lambda job_id: setattr(stats, "skipped_runs", stats.skipped_runs + 1))
    schedule(scheduler, SYNC_JOB_ID, job, 0.2)
    scheduler.start()
    try:
        await eventually(lambda: stats.runs[OK] >= 2, timeout=15)
        manual = await job.run([USER])  # waits for the scheduled run in progress
    finally:
        await job.stop()
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)

    assert fake.probe["max"] == 1
    assert stats.skipped_runs >= 1
    assert manual.outcome == OK
    assert fake.pages_asked() == [1, 2, 3] * (len(fake.pages_asked()) // 3)


async def test_a_scheduled_run_skips_while_a_manual_run_is_going():
    gate = asyncio.Event()
    calls: list[str] = []
    skipped: list[int] = []

    async def work(label: str = "scheduled") -> str:
        calls.append(label)
        await gate.wait()
        return label

    job = ExclusiveJob("demo", work, on_skip=lambda: skipped.append(1))
    manual = asyncio.create_task(job.run("manual"))
    await asyncio.sleep(0)
    await job.scheduled()
    second = asyncio.create_task(job.run("second"))
    await asyncio.sleep(0.01)
    assert calls == ["manual"] and skipped == [1] and job.busy
    gate.set()
    assert await manual == "manual" and await second == "second"
    assert calls == ["manual", "second"]


async def test_stop_interrupts_a_scheduled_run_quietly():
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(60)

    job: ExclusiveJob[None] = ExclusiveJob("demo", work)
    task = asyncio.create_task(job.scheduled())
    await started.wait()
    await job.stop()
    await task  # returned, not cancelled
    await job.scheduled()  # after stop: nothing runs
    assert not job.busy


# --------------------------------------------------------------------------- push and sync


PUSH = {
    "flag": "00", "deviceUserid": USER, "parentUserId": "217", "time": "2026-11-27 09:15:00", "deviceId": 3000,
    "sensorsDates": [{"times": "09:15:00", "sensorsId": 30001, "isAlarm": "0", "sensorsTypeId": 1, "isLine": 1,
                      "reVal": "1500", "value": "1500.0"}],
}  # fmt: skip


async def test_a_reading_pushed_and_synced_is_stored_and_counted_once(app_client, fake):
    fake.state.flag01 = True  # the start-up run fails: the push comes first
    client, app = await start_synced_app(app_client, fake)
    resp = await client.post("/api/webhooks/tlink", data=orjson.dumps(PUSH))
    assert resp.status == 200
    fake.state.flag01 = False

    report = await app[SYNC_JOB].run()

    assert report.readings == READINGS_PER_SYNC - 1
    rows = await app[SERVICES].db.fetchall("SELECT COUNT(*) FROM sensor_readings WHERE sensor_id = %s", [30001])
    assert int(rows[0][0]) == 1
    assert await count(app, "SELECT COUNT(*) FROM sensor_readings") == READINGS_PER_SYNC

    later = {**PUSH, "deviceId": 3001, "sensorsDates": [{**PUSH["sensorsDates"][0], "sensorsId": 30011}]}
    assert (await client.post("/api/webhooks/tlink", data=orjson.dumps(later))).status == 200
    assert await count(app, "SELECT COUNT(*) FROM sensor_readings") == READINGS_PER_SYNC


# --------------------------------------------------------------------------- configuration


async def test_enabled_but_unconfigured_sync_warns_once_and_is_not_scheduled(app_client, fake, caplog):
    caplog.set_level(logging.WARNING, logger="tlink.jobs")
    client = await app_client(**tlink_settings(fake, TLINK_SYNC_USER_IDS=""))
    app = client.server.app

    warnings = [r for r in caplog.records if "enabled but not configured" in r.getMessage()]
    assert len(warnings) == 1
    assert SYNC_JOB not in app
    assert [job.id for job in app[SCHEDULER].get_jobs()] == [RETENTION_JOB_ID]
    await asyncio.sleep(0.1)
    assert fake.state.requests == {} and finished_runs(app[SYNC_STATS]) == 0


async def test_disabled_sync_is_not_scheduled(app_client, fake):
    client = await app_client(**tlink_settings(fake, TLINK_SYNC_ENABLED=False))
    app = client.server.app
    assert SYNC_JOB not in app and app[SCHEDULER].get_job(SYNC_JOB_ID) is None
    assert app[SCHEDULER].get_job(RETENTION_JOB_ID) is not None


# --------------------------------------------------------------------------- command line


def cli_env(fake: Fake, database_url: str, log_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLINK_", "DATABASE_URL", "SYNC_LOG_DIR"))}
    env.update({k: str(v) for k, v in tlink_settings(fake).items()})
    env.update(DATABASE_URL=database_url, SYNC_LOG_DIR=str(log_root), LOG_LEVEL="WARNING", **extra)
    return env


async def test_sync_once_from_the_command_line(fake, database_url, log_root, tmp_path):
    env = cli_env(fake, database_url, log_root)

    status, out, err = await run_cli(env, tmp_path, "sync", "--once")

    assert status == 0, err
    assert "user 385: pages=3 devices=5 unchanged=0 readings=15 failures=0" in out
    assert re.search(
        r"TLINK sync completed users=1 devices=5 unchanged=0 readings=15 failures=0 seconds=\S+ outcome=ok", out
    )
    assert device_ids(log_root) == DEVICES
    db = await connect(database_url)
    try:
        rows = await db.fetchall("SELECT device_name FROM devices ORDER BY device_id")
        assert [r[0] for r in rows] == [f"Tank {n}" for n in range(1, 6)]
    finally:
        await db.close()

    status, out, _ = await run_cli(env, tmp_path, "sync", "--once", "--user", "999")
    assert status == 0 and "user 999: pages=1 devices=0 unchanged=0 readings=0 failures=0" in out

    fake.state.flag01 = True
    status, out, _ = await run_cli(env, tmp_path, "sync", "--once")
    assert status == 1 and "failures=1" in out and "failed: page 1: TLINK" in out


async def test_sync_once_refuses_while_the_service_runs(app_client, fake, database_url, log_root, tmp_path):
    await app_client()

    status, _, err = await run_cli(cli_env(fake, database_url, log_root), tmp_path, "sync", "--once")

    assert status == 1 and "a running service?" in err
    assert device_ids(log_root) == []


def test_sync_needs_once_and_configuration(monkeypatch, tmp_path, capsys, restore_logging):
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("TLINK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SYNC_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite")

    assert main(["sync"]) == 2
    assert "pass --once" in capsys.readouterr().err
    assert main(["sync", "--once"]) == 2
    assert "TLINK_SYNC_USER_IDS" in capsys.readouterr().err
    monkeypatch.setenv("TLINK_SYNC_USER_IDS", "385")
    assert main(["sync", "--once"]) == 2
    assert "TLINK_OAUTH_USERNAME" in capsys.readouterr().err

    monkeypatch.setenv("TLINK_OAUTH_USERNAME", "demo")
    monkeypatch.setenv("TLINK_OAUTH_CLIENT_ID", "example-client")
    (tmp_path / "logs").mkdir()
    lock = lock_root(tmp_path / "logs")
    try:
        assert main(["sync", "--once"]) == 1
    finally:
        os.close(lock)
    assert "another process (a running service?) is writing" in capsys.readouterr().err
