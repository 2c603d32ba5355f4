"""Backfill: gaps found in the read models are filled from the fake TLINK's sensor history, exactly once,
within the quota; the coverage endpoint and command show what is missing. On both database backends."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from eventlog.events import BACKFILL, BACKFILL_FAILED
from eventlog.files import device_days, log_path, read_lines
from eventlog.verify import verify
from ops.fake_tlink import FAKE_TLINK_STATE, HISTORY_PATH, FakeTlinkState, make_fake_tlink_app, pushes
from projections.history_calls import read_ledger
from service.http.keys import SERVICES
from tests.conftest import fake_tlink_settings, run_cli

FIXTURES = Path(__file__).parent / "fixtures"
USER, DEVICE = 385, 2864
PLATFORM = timedelta(hours=8)  # the platform's clock in these tests (TLINK_TIMEZONE=+08:00)
DAY = (datetime.now(UTC) + PLATFORM).date() - timedelta(days=1)  # yesterday on the platform: inside the look-back
T0 = datetime.combine(DAY, datetime.min.time()) + timedelta(hours=8)  # 08:00 platform time
HOUR = timedelta(hours=1)


class Fake:
    def __init__(self, server: TestServer, state: FakeTlinkState) -> None:
        self.server, self.state = server, state

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def history_calls(self) -> int:
        return sum(1 for call in self.state.api_calls if call.path == HISTORY_PATH)


@pytest.fixture
async def fake(aiohttp_server) -> Fake:
    app = make_fake_tlink_app(FIXTURES, state=FakeTlinkState())
    return Fake(await aiohttp_server(app), app[FAKE_TLINK_STATE])


def tlink_settings(fake: Fake, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        **fake_tlink_settings(fake.url, USER),
        "TLINK_TIMEZONE": "+08:00",
    }
    values.update(overrides)
    return values


def text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


async def push_all(client, fake: Fake, sensor_id: int, drop: tuple[datetime, datetime] | None = None) -> int:
    bodies = pushes(fake.state, DEVICE, USER, sensor_id, drop)
    for body in bodies:
        resp = await client.post("/api/webhooks/tlink", json=body)
        assert resp.status == 200, await resp.text()
    return len(bodies)


async def history(client, sensor_id: int) -> list[tuple[str, str]]:
    resp = await client.get(f"/api/users/{USER}/devices/{DEVICE}/history?historyLimit=1000")
    assert resp.status == 200
    [sensor] = [s for s in (await resp.json())["sensors"] if s["sensorId"] == sensor_id]
    return [(r["recordedAt"], r["value"]) for r in sensor["history"]]


async def coverage(client, day: date = DAY) -> dict[int, dict[str, Any]]:
    resp = await client.get(f"/api/users/{USER}/devices/{DEVICE}/coverage?day={day}")
    assert resp.status == 200, await resp.text()
    return {s["sensorId"]: s for s in (await resp.json())["sensors"]}


def expected(fake: Fake, sensor_id: int) -> list[tuple[str, str]]:
    readings = fake.state.histories[sensor_id]
    # TLINK_TIMEZONE is set: answers give reading times with the platform's offset
    return [(m.isoformat(timespec="seconds") + "+08:00", readings[m]) for m in sorted(readings, reverse=True)]


def logged(log_root: Path, kind: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line.raw) for day in device_days(log_root, DEVICE)
             for line in read_lines(log_path(log_root, DEVICE, day), 0, 1, day)]  # fmt: skip
    return [doc for doc in lines if doc["type"] == kind]


async def test_an_hour_of_dropped_pushes_comes_back_once_and_is_not_asked_again(app_client, fake, log_root):
    fake.state.generate_history(11, T0, T0 + 4 * HOUR, 60)
    client = await app_client(**tlink_settings(fake))
    await push_all(client, fake, 11, drop=(T0 + HOUR, T0 + 2 * HOUR - timedelta(seconds=1)))
    before = (await coverage(client))[11]
    assert before["cadenceSeconds"] == 60.0
    assert before["openGaps"] == 1 and before["missing"] == 60
    assert before["gaps"] == [{"start": (T0 + HOUR - timedelta(minutes=1, seconds=-1)).isoformat() + "+08:00",
                               "end": (T0 + 2 * HOUR - timedelta(seconds=1)).isoformat() + "+08:00", "missing": 60,
                               "askedVendor": False}]  # fmt: skip
    assert before["readings"] == {"push": 181, "sync": 0, "backfill": 0, "legacy": 0}

    report = await client.server.app[SERVICES].backfill.run()

    [gap] = report.gaps
    assert (gap.outcome, gap.calls, gap.recovered) == ("filled", 1, 60)
    assert await history(client, 11) == expected(fake, 11)  # every reading once, newest first
    after = (await coverage(client))[11]
    assert after["openGaps"] == 0 and after["gaps"] == [] and after["coverage"] == 1.0
    assert after["readings"] == {"push": 181, "sync": 0, "backfill": 60, "legacy": 0}
    assert after["quota"]["spent"] == 1 and after["quota"]["limit"] == 40
    [event] = logged(log_root, BACKFILL)
    assert event["request"] == {"sensorId": 11, "startDate": text(T0 + HOUR - timedelta(seconds=59)),
                                "endDate": text(T0 + 2 * HOUR - timedelta(seconds=1)), "pagingState": "",
                                "pageSize": 100}  # fmt: skip
    assert event["userId"] == USER and len(event["body"]["dataList"]) == 60 and event["body"]["flag"] == "00"
    assert verify(log_root).ok

    calls = fake.history_calls()
    again = await client.server.app[SERVICES].backfill.run()
    assert again.gaps == [] and fake.history_calls() == calls
    metrics = await (await client.get("/metrics")).text()
    for line in ("tlink_backfill_readings_recovered_total 60.0", 'tlink_backfill_calls_total{outcome="ok"} 1.0',
                 'tlink_backfill_runs_total{outcome="ok"} 2.0', "tlink_backfill_open_gaps 0.0"):  # fmt: skip
        assert line in metrics


async def test_readings_the_service_never_saw_before_a_sync_are_backfilled(app_client, fake):
    """The service was down from 10:00: the sync afterwards records the vendor's newest reading (12:00)."""
    fake.state.generate_history(11, T0, T0 + 4 * HOUR, 60)
    client = await app_client(**tlink_settings(fake))
    await push_all(client, fake, 11, drop=(T0 + 2 * HOUR + timedelta(seconds=1), T0 + 4 * HOUR))
    newest = T0 + 4 * HOUR
    device = {"id": DEVICE, "userId": USER, "deviceName": "Tank", "sensorsList": [
        {"id": 11, "deviceId": DEVICE, "sensorName": "Oil", "value": fake.state.histories[11][newest],
         "isAlarms": 0, "isLine": 1, "updateDate": text(newest)}]}  # fmt: skip
    await client.server.app[SERVICES].ingestor.sync_device(USER, device)
    assert (await coverage(client))[11]["missing"] == 119

    report = await client.server.app[SERVICES].backfill.run()

    assert [(g.outcome, g.recovered) for g in report.gaps] == [("filled", 119)]
    assert await history(client, 11) == expected(fake, 11)
    assert (await coverage(client))[11]["readings"] == {"push": 121, "sync": 1, "backfill": 119, "legacy": 0}


async def test_the_quota_holds_across_a_restart_and_a_window_goes_on_where_it_stopped(
    app_client, fake, log_root, database_url
):
    fake.state.generate_history(11, T0, T0 + 4 * HOUR, 60)
    settings = tlink_settings(fake, BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY=2, BACKFILL_PAGE_SIZE=10)
    client = await app_client(**settings)
    await push_all(client, fake, 11, drop=(T0 + HOUR, T0 + 2 * HOUR - timedelta(seconds=1)))

    report = await client.server.app[SERVICES].backfill.run()

    assert [(g.outcome, g.calls, g.recovered) for g in report.gaps] == [("quota spent", 2, 20)]
    await client.close()
    client = await app_client(**settings)  # a restart: the count comes from the log
    again = await client.server.app[SERVICES].backfill.run()
    assert [(g.outcome, g.calls) for g in again.gaps] == [("quota spent", 0)]
    assert fake.history_calls() == 2
    # On the next UTC day the window goes on from the cursor of its last page, not from its first.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    ledger = read_ledger(log_root, DEVICE, "2000-01-01", tomorrow)
    assert ledger.of(11).spent_today == 0
    assert [ledger.resume_from(11, *window) for window in ledger.of(11).next_page] == ["0x00000014"]


async def test_a_refusing_or_silent_vendor_stops_only_the_backfill(app_client, fake, log_root):
    for sensor in (11, 12):
        fake.state.generate_history(sensor, T0, T0 + 4 * HOUR, 60)
    client = await app_client(**tlink_settings(fake))
    for sensor in (11, 12):
        await push_all(client, fake, sensor, drop=(T0 + HOUR, T0 + 2 * HOUR - timedelta(seconds=1)))
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    fake.state.history_calls[(11, today)] = 50  # sensor 11 spent its quota elsewhere today

    report = await client.server.app[SERVICES].backfill.run()

    assert [(g.gap.sensor_id, g.outcome) for g in report.gaps] == [(11, "refused"), (12, "filled")]
    assert report.failures == 1
    [refusal] = logged(log_root, BACKFILL_FAILED)
    assert refusal["body"]["flag"] == "01" and refusal["request"]["sensorId"] == 11
    again = await client.server.app[SERVICES].backfill.run()
    assert [(g.gap.sensor_id, g.outcome, g.calls) for g in again.gaps] == [(11, "refused today", 0)]

    fake.state.fail_with_500 = 100  # the vendor down: the run ends, the service goes on
    fake.state.history_calls.clear()
    down = await client.server.app[SERVICES].backfill.run()
    assert [(g.outcome, g.calls) for g in down.gaps] == [("refused today", 0)]
    assert (await client.get("/api/ready")).status == 200
    resp = await client.post("/api/webhooks/tlink", json=pushes(fake.state, DEVICE, USER, 12)[0])
    assert resp.status == 200 and (await resp.json())["duplicate"] is True


async def test_a_vendor_without_answer_ends_the_run(app_client, fake, log_root):
    fake.state.generate_history(11, T0, T0 + 4 * HOUR, 60)
    client = await app_client(**tlink_settings(fake))
    await push_all(client, fake, 11, drop=(T0 + HOUR, T0 + 2 * HOUR - timedelta(seconds=1)))
    fake.state.fail_with_500 = 100

    report = await client.server.app[SERVICES].backfill.run()

    assert [(g.outcome, g.calls) for g in report.gaps] == [("not answered", 1)]
    assert report.outcome == "failed"
    [failure] = logged(log_root, BACKFILL_FAILED)
    assert "500" in failure["body"]["error"]
    assert (await client.get("/api/ready")).status == 200


async def test_a_sensor_without_a_cadence_has_no_gaps(app_client, fake):
    fake.state.generate_history(11, T0, T0 + 8 * timedelta(minutes=1), 60)  # 9 readings
    client = await app_client(**tlink_settings(fake))
    await push_all(client, fake, 11)
    found = (await coverage(client))[11]
    assert found["cadenceSeconds"] is None and found["gaps"] == [] and found["coverage"] == 1.0
    assert (await client.server.app[SERVICES].backfill.run()).gaps == []


async def test_coverage_answers_bad_days_with_a_400(app_client):
    client = await app_client()
    for day in ("2026-02-30", "yesterday", "0999-01-01"):
        resp = await client.get(f"/api/users/{USER}/devices/{DEVICE}/coverage?day={day}")
        assert resp.status == 400 and "day" in (await resp.json())["error"]
    assert (await client.get(f"/api/users/{USER}/devices/{DEVICE}/coverage")).status == 404  # no such user yet


# --------------------------------------------------------------------------- command line


def cli_env(fake: Fake, database_url: str, log_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLINK_", "BACKFILL_", "DATABASE_URL"))}
    env.update({k: str(v) for k, v in tlink_settings(fake).items()})
    env.update(DATABASE_URL=database_url, SYNC_LOG_DIR=str(log_root), LOG_LEVEL="WARNING", USE_HTTPS="false")
    return env


async def test_backfill_and_coverage_from_the_command_line(app_client, fake, database_url, log_root, tmp_path):
    fake.state.generate_history(11, T0, T0 + 4 * HOUR, 60)
    client = await app_client(**tlink_settings(fake))
    await push_all(client, fake, 11, drop=(T0 + HOUR, T0 + 2 * HOUR - timedelta(seconds=1)))
    env = cli_env(fake, database_url, log_root)

    status, out, err = await run_cli(env, tmp_path, "coverage", "--day", str(DAY))  # alongside the service
    assert status == 0, err
    assert "sensor 11: cadence 60 s, readings push=181 sync=0 backfill=0 legacy=0, open gaps 1" in out

    status, _, err = await run_cli(env, tmp_path, "backfill")
    assert status == 1 and "a running service?" in err
    await client.close()

    status, out, err = await run_cli(env, tmp_path, "backfill", "--dry-run")
    assert status == 0, err
    assert f"device {DEVICE} sensor 11: gap" in out and "dry run, 0 calls" in out and fake.history_calls() == 0

    status, out, err = await run_cli(env, tmp_path, "backfill", "--device", str(DEVICE))
    assert status == 0, err
    assert "filled, 1 calls, 60 readings recovered" in out and "recovered=60 open=0 failures=0" in out

    status, out, _ = await run_cli(env, tmp_path, "coverage", "--day", str(DAY), "--device", str(DEVICE))
    assert "readings push=181 sync=0 backfill=60 legacy=0, open gaps 0, coverage 1.0000" in out

    status, _, err = await run_cli({**env, "TLINK_OAUTH_USERNAME": ""}, tmp_path, "backfill")
    assert status == 2 and "TLINK_OAUTH_USERNAME" in err
