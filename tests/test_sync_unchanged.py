"""A synced device object identical to the device's newest `sync` event is not logged again.

On the real app against the fake TLINK server, on both database backends: repeated
identical answers append one line per device, a changed object is appended, a restart
(of the app or of `tlink-push sync --once`) does not log an unchanged device again,
and the log replays into the same read models either way.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventlog.events import PUSH, SYNC, SYNC_FAILED, body_digest
from eventlog.store import LogStore
from projections.db import connect
from projections.readings import sync_readings
from projections.replay import replay_logs
from projections.schema import READ_MODEL_TABLES
from service.http.keys import SERVICES, SYNC_JOB, SYNC_STATS
from service.jobs.sync import OK, TlinkSync
from service.jobs.sync_state import LastSync, LastSyncs, newest_sync
from tests.test_sync import (
    DEVICES,
    FIXTURES,
    READINGS_PER_SYNC,
    USER,
    Fake,
    cli_env,
    finished_runs,
    log_events,
    run_cli,
    start_fake,
    start_synced_app,
)


@pytest.fixture
def fixtures(tmp_path) -> Path:
    """A copy of the fixtures the fake answers from, read again on every request: tests change it."""
    folder = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, folder)
    return folder


@pytest.fixture
async def fake(aiohttp_server, fixtures) -> Fake:
    return await start_fake(aiohttp_server, fixtures)


def change_page(fixtures: Path, page: int, change: Any, *, key_order_reversed: bool = False) -> None:
    """Apply `change` to the page's dataList; optionally write every object with its keys reversed."""
    path = fixtures / f"sync_page{page}.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc["dataList"])
    if key_order_reversed:
        doc = _reversed_keys(doc)
    path.write_text(json.dumps(doc, indent=3), encoding="utf-8")


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def line_counts(root: Path) -> list[int]:
    return [len(log_events(root, d)) for d in DEVICES]


async def dump(url: str) -> dict[str, list[str]]:
    db = await connect(url)
    try:
        return {t: sorted(map(repr, await db.fetchall(f"SELECT * FROM {t}"))) for t in READ_MODEL_TABLES}
    finally:
        await db.close()


async def assert_replay_gives_the_same_read_models(url: str, root: Path) -> None:
    """The read models the service left are what the log alone rebuilds (the app must be closed)."""
    live = await dump(url)
    db = await connect(url)
    try:
        await replay_logs(db, root)
    finally:
        await db.close()
    assert await dump(url) == live


async def scrape(client) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


# --------------------------------------------------------------------------- in one process


async def test_identical_answers_are_logged_once_and_counted_unchanged(
    app_client, fake, log_root, database_url, caplog
):
    client, app = await start_synced_app(app_client, fake)
    assert line_counts(log_root) == [1] * 5
    before = await dump(database_url)
    caplog.set_level("INFO", logger="tlink.sync")

    report = await app[SYNC_JOB].run()
    again = await app[SYNC_JOB].run()

    for run in (report, again):
        assert (run.devices, run.unchanged, run.readings, run.failures, run.outcome) == (0, 5, 0, 0, OK)
        assert [(u.pages, u.devices, u.unchanged) for u in run.users] == [(3, 0, 5)]
    assert line_counts(log_root) == [1] * 5
    stats = app[SYNC_STATS]
    assert (stats.devices, stats.unchanged, stats.readings) == (5, 10, READINGS_PER_SYNC)
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLINK sync completed")]
    assert len(summaries) == 2
    assert all(
        re.fullmatch(r"TLINK sync completed users=1 devices=0 unchanged=5 readings=0 failures=0 seconds=\S+", s)
        for s in summaries
    )
    assert not [r for r in caplog.records if r.getMessage() == "TLINK device synced"]
    assert (await scrape(client))["tlink_sync_devices_unchanged_total"] == 10
    assert await dump(database_url) == before  # nothing was projected: nothing changed

    await client.close()
    await assert_replay_gives_the_same_read_models(database_url, log_root)


async def test_a_changed_object_is_appended_and_key_order_or_spacing_is_no_change(
    app_client, fake, fixtures, log_root, database_url
):
    client, app = await start_synced_app(app_client, fake)

    def new_reading(devices: list[dict[str, Any]]) -> None:
        devices[1]["sensorsList"][0].update(updateDate="2026-11-27 09:16:00", value="1499.0")  # device 3001

    change_page(fixtures, 1, new_reading)
    change_page(fixtures, 2, lambda devices: None, key_order_reversed=True)  # the same values, reordered
    report = await app[SYNC_JOB].run()

    assert (report.devices, report.unchanged, report.readings, report.outcome) == (1, 4, 1, OK)
    assert line_counts(log_root) == [1, 2, 1, 1, 1]
    first, second = log_events(log_root, 3001)
    assert second["type"] == SYNC and second["body"]["sensorsList"][0]["updateDate"] == "2026-11-27 09:16:00"
    assert first["body"] != second["body"]

    def rename(devices: list[dict[str, Any]]) -> None:
        devices[0]["deviceName"] = "Tank 1 (north)"  # metadata only, no new reading

    change_page(fixtures, 1, rename)
    report = await app[SYNC_JOB].run()
    assert (report.devices, report.unchanged, report.readings) == (1, 4, 0)
    assert line_counts(log_root) == [2, 2, 1, 1, 1]
    rows = await app[SERVICES].db.fetchall("SELECT device_name FROM devices WHERE device_id = %s", [3000])
    assert rows[0][0] == "Tank 1 (north)"

    report = await app[SYNC_JOB].run()  # the changed objects are now the newest: unchanged again
    assert (report.devices, report.unchanged) == (0, 5)
    assert line_counts(log_root) == [2, 2, 1, 1, 1]

    await client.close()
    await assert_replay_gives_the_same_read_models(database_url, log_root)


async def test_a_failed_sync_in_between_does_not_reset_what_counts_as_unchanged(
    app_client, aiohttp_server, fixtures, log_root
):
    fake = await start_fake(aiohttp_server, fixtures)
    client, app = await start_synced_app(app_client, fake)
    change_page(fixtures, 2, lambda devices: devices[1].update(sensorsList=5))  # device 3003 cannot be synced

    report = await app[SYNC_JOB].run()
    assert (report.devices, report.unchanged, report.failures) == (0, 4, 1)
    assert [e["type"] for e in log_events(log_root, 3003)] == [SYNC, SYNC_FAILED]

    shutil.copy(FIXTURES / "sync_page2.json", fixtures / "sync_page2.json")  # 3003 as it was synced first
    report = await app[SYNC_JOB].run()
    assert (report.devices, report.unchanged, report.failures) == (0, 5, 0)
    assert [e["type"] for e in log_events(log_root, 3003)] == [SYNC, SYNC_FAILED]
    await client.close()

    client, app = await start_synced_app(app_client, fake)  # and after a restart, read from the log
    assert (app[SYNC_STATS].devices, app[SYNC_STATS].unchanged, app[SYNC_STATS].failures) == (0, 5, 0)
    assert [e["type"] for e in log_events(log_root, 3003)] == [SYNC, SYNC_FAILED]


# --------------------------------------------------------------------------- across restarts


async def test_a_restart_does_not_log_an_unchanged_device_again(app_client, fake, fixtures, log_root, database_url):
    client, _ = await start_synced_app(app_client, fake)
    await client.close()

    client, app = await start_synced_app(app_client, fake)  # its start-up run reads the newest syncs from the log
    stats = app[SYNC_STATS]
    assert finished_runs(stats) == 1
    assert (stats.devices, stats.unchanged, stats.readings, stats.failures) == (0, 5, 0, 0)
    assert line_counts(log_root) == [1] * 5

    change_page(fixtures, 3, lambda devices: devices[0].update(lat="13.7600"))  # device 3004 moved
    report = await app[SYNC_JOB].run()
    assert (report.devices, report.unchanged) == (1, 4)
    assert line_counts(log_root) == [1, 1, 1, 1, 2]
    await client.close()

    client, app = await start_synced_app(app_client, fake)
    assert (app[SYNC_STATS].devices, app[SYNC_STATS].unchanged) == (0, 5)
    assert line_counts(log_root) == [1, 1, 1, 1, 2]
    await client.close()
    await assert_replay_gives_the_same_read_models(database_url, log_root)


def fixture_device(device_id: int) -> dict[str, Any]:
    for page in (1, 2, 3):
        for device in json.loads((FIXTURES / f"sync_page{page}.json").read_text(encoding="utf-8"))["dataList"]:
            if device["id"] == device_id:
                return dict(device)
    raise KeyError(device_id)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def write_log(root: Path, events: list[tuple[datetime, str, int, int, dict[str, Any]]]) -> None:
    """Append events with the given receipt times, as an earlier run of the service would have."""
    clock = Clock(datetime.now(UTC))
    store = LogStore(root, clock=clock)
    await store.open()
    try:
        for when, type_, device_id, user_id, body in events:
            clock.now = when
            await store.append(store.new_event(type_, device_id, user_id, body))
    finally:
        await store.close()


async def test_the_newest_sync_may_be_in_an_older_daily_file(app_client, fake, log_root, database_url):
    yesterday = datetime.now(UTC) - timedelta(days=1)
    device = fixture_device(3000)
    push = {
        "flag": "00", "deviceUserid": USER, "parentUserId": "217", "time": "2026-11-27 09:20:00", "deviceId": 3000,
        "sensorsDates": [{"times": "09:20:00", "sensorsId": 30001, "isAlarm": "0", "sensorsTypeId": 1, "isLine": 1,
                          "reVal": "1490", "value": "1490.0"}],
    }  # fmt: skip
    failed = {"userId": USER, "page": 1, "error": "device 3000: something", "at": "2026-11-27T09:21:00.000Z"}
    await write_log(
        log_root,
        [
            (yesterday - timedelta(minutes=2), SYNC, 3000, USER, {**device, "deviceName": "an older name"}),
            (yesterday, SYNC, 3000, USER, device),
            (yesterday + timedelta(seconds=1), PUSH, 3000, USER, push),
            (datetime.now(UTC), SYNC_FAILED, 3000, USER, failed),
        ],
    )
    assert newest_sync(log_root, 3000) == LastSync(USER, body_digest(device))
    assert newest_sync(log_root, 3001) is None

    client, app = await start_synced_app(app_client, fake)

    stats = app[SYNC_STATS]
    assert (stats.devices, stats.unchanged) == (4, 1)
    assert [e["type"] for e in log_events(log_root, 3000)] == [SYNC, SYNC, PUSH, SYNC_FAILED]
    assert line_counts(log_root) == [4, 1, 1, 1, 1]
    await client.close()
    await assert_replay_gives_the_same_read_models(database_url, log_root)


async def test_an_object_recorded_for_another_user_is_logged_again(app_client, fake, log_root):
    await write_log(log_root, [(datetime.now(UTC), SYNC, 3000, 999, fixture_device(3000))])

    client, app = await start_synced_app(app_client, fake)

    assert (app[SYNC_STATS].devices, app[SYNC_STATS].unchanged) == (5, 0)
    assert [e["userId"] for e in log_events(log_root, 3000)] == [999, USER]
    await client.close()


async def test_sync_once_twice_logs_unchanged_devices_once(fake, database_url, log_root, tmp_path):
    env = cli_env(fake, database_url, log_root)

    status, out, err = await run_cli(env, tmp_path, "sync", "--once")
    assert status == 0, err
    assert "user 385: pages=3 devices=5 unchanged=0 readings=15 failures=0" in out

    status, out, err = await run_cli(env, tmp_path, "sync", "--once")
    assert status == 0, err
    assert "user 385: pages=3 devices=0 unchanged=5 readings=0 failures=0" in out
    assert re.search(
        r"TLINK sync completed users=1 devices=0 unchanged=5 readings=0 failures=0 seconds=\S+ outcome=ok", out
    )
    assert line_counts(log_root) == [1] * 5


# --------------------------------------------------------------------------- pieces


def test_newest_sync_reads_back_over_other_events_and_bad_lines(log_root):
    folder = log_root / "7"
    folder.mkdir(parents=True)
    body = {"id": 7, "b": [1, 2.5, None], "a": "x"}

    def line(type_: str, body: dict[str, Any], user: int = USER) -> bytes:
        return orjson.dumps({"v": 1, "id": "e", "type": type_, "receivedAt": "2026-01-01T00:00:00.000Z",
                             "deviceId": 7, "userId": user, "prev": "0" * 64, "body": body})  # fmt: skip

    (folder / "device7-2026-01-01.log").write_bytes(line(SYNC, {"id": 7}) + b"\n" + line(SYNC, body) + b"\n")
    (folder / "device7-2026-01-02.log").write_bytes(
        line(PUSH, {"note": '"type":"sync"'}) + b"\nnot json\n" + line(SYNC_FAILED, {}) + b'\n{"type":"sync", "bo'
    )  # the last line is unfinished: not a line yet

    assert newest_sync(log_root, 7) == LastSync(USER, body_digest({"a": "x", "id": 7, "b": [1, 2.5, None]}))
    assert newest_sync(log_root, 7, durable_end=("2026-01-01", len(line(SYNC, {"id": 7})) + 1)) == LastSync(
        USER, body_digest({"id": 7})
    )
    assert newest_sync(log_root, 8) is None


async def test_last_syncs_reads_the_log_once_then_remembers(log_root, monkeypatch):
    await write_log(log_root, [(datetime.now(UTC), SYNC, 3000, USER, fixture_device(3000))])
    reads: list[int] = []
    real = newest_sync

    def counted(root: Path, device_id: int, durable_end: Any = None) -> LastSync | None:
        reads.append(device_id)
        return real(root, device_id, durable_end)

    monkeypatch.setattr("service.jobs.sync_state.newest_sync", counted)
    syncs = LastSyncs(log_root)
    expected = LastSync(USER, body_digest(fixture_device(3000)))
    assert await syncs.get(3000) == expected and await syncs.get(3000) == expected
    assert await syncs.get(3001) is None and await syncs.get(3001) is None
    assert reads == [3000, 3001]
    syncs.appended(3001, USER, "d")
    assert await syncs.get(3001) == LastSync(USER, "d")
    syncs.forget(3000)
    assert await syncs.get(3000) == expected
    assert reads == [3000, 3001, 3000]


async def test_readings_are_known_per_device_when_estimated(log_root):
    ingestor = SimpleNamespace(
        store=SimpleNamespace(root=log_root, durable_end=lambda d: (None, 0)),
        projector=SimpleNamespace(available=False),
    )
    sync = TlinkSync(None, ingestor, None, None, None, user_ids=[USER], page_size=2)  # type: ignore[arg-type]
    readings = sync_readings(fixture_device(3000))
    sync._saw(3000, readings)

    assert await sync._known(3000, readings) == {(r.sensor_id, r.recorded_at) for r in readings}
    assert await sync._known(3001, readings) == set()  # the same sensor ids on another device are not known


async def test_a_reading_of_another_device_with_the_same_sensor_id_is_new(app_client, fake):
    fake.state.flag01 = True  # the start-up run fails: the push comes first
    client, app = await start_synced_app(app_client, fake)
    push = {
        "flag": "00", "deviceUserid": USER, "parentUserId": "217", "time": "2026-11-27 09:15:00", "deviceId": 9999,
        "sensorsDates": [{"times": "09:15:00", "sensorsId": 30001, "isAlarm": "0", "sensorsTypeId": 1, "isLine": 1,
                          "reVal": "1500", "value": "1500.0"}],
    }  # fmt: skip
    assert (await client.post("/api/webhooks/tlink", data=orjson.dumps(push))).status == 200
    fake.state.flag01 = False

    report = await app[SYNC_JOB].run()

    assert report.readings == READINGS_PER_SYNC  # device 9999's sensor 30001 is not device 3000's
