"""A logged line that cannot be applied stops its own device only, live and in replay, named by file and line."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventlog.events import PUSH
from eventlog.files import log_path
from eventlog.store import LogStore
from projections.db import connect
from projections.replay import replay_logs
from tests.conftest import fixture_bytes

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
BAD, GOOD = 7001, 7002


def push(device_id: int, at: str, value: str) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    body["deviceId"], body["time"] = device_id, at
    for entry in body["sensorsDates"]:
        entry["times"], entry["value"] = at[11:], value
    return body


async def write_log(root: Path, bodies: list[dict[str, Any]]) -> list[str]:
    """Append these bodies as push events, as an older version (without today's checks) would have; their ids."""
    store = LogStore(root)
    await store.open()
    try:
        ids = []
        for body in bodies:
            appended = await store.append(store.new_event(PUSH, body["deviceId"], 385, body))
            ids.append(appended.event.id)
        return ids
    finally:
        await store.close()


def year_999(device_id: int) -> dict[str, Any]:
    return push(device_id, "0999-06-01 10:00:00", "9.9")  # no read model can hold that date


async def get(client: Any, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    return await response.json()


async def wait_projected(client: Any, device_id: int, value: str) -> None:
    for _ in range(200):
        body = await client.get(f"/api/users/385/devices/{device_id}/latest")
        if body.status == 200 and {s["latestValue"] for s in (await body.json())["sensors"]} == {value}:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"device {device_id} never showed {value}")


async def test_a_bad_logged_line_stops_only_its_device_live_and_in_replay(app_client, log_root, database_url):
    ids = await write_log(
        log_root,
        [push(BAD, "2026-05-01 10:00:00", "1.0"), year_999(BAD), push(BAD, "2026-05-01 10:02:00", "3.0"),
         push(GOOD, "2026-05-01 10:00:00", "5.0")],
    )  # fmt: skip
    client = await app_client()
    await wait_projected(client, GOOD, "5.0")
    ready = await get(client, "/api/ready")  # other devices go on: the service stays ready
    [stopped] = ready["checks"]["projection"]["stoppedDevices"]
    day = ready_day = stopped["file"].split("-", 1)[1][:10]
    assert stopped == {
        "deviceId": BAD, "file": f"{BAD}/device{BAD}-{ready_day}.log", "line": 2, "eventId": ids[1],
        "reason": stopped["reason"],
    }  # fmt: skip
    assert "0999-06-01 10:00:00" in stopped["reason"]
    latest = await get(client, f"/api/users/385/devices/{BAD}/latest")
    assert {s["latestValue"] for s in latest["sensors"]} == {"1.0"}  # line 1 applied, nothing after line 2
    metrics = await (await client.get("/metrics")).text()
    assert "tlink_projection_stopped_devices 1.0" in metrics

    answer = await client.post("/api/webhooks/tlink", json=push(BAD, "2026-05-01 10:03:00", "4.0"))
    assert answer.status == 200 and (await answer.json())["projected"] is False  # logged, durable, not projected
    answer = await client.post("/api/webhooks/tlink", json=push(GOOD, "2026-05-01 10:03:00", "6.0"))
    assert answer.status == 200 and (await answer.json())["projected"] is True
    await client.close()

    db = await connect(database_url)
    try:
        workers = 2 if database_url.startswith("mysql") else 1
        report = await replay_logs(db, log_root, url=database_url, workers=workers)
        [stop] = report.stopped
        assert (stop.device_id, stop.day, stop.line_no, stop.event_id) == (BAD, day, 2, ids[1])
        assert f"device{BAD}-{day}.log line 2 (event {ids[1]})" in stop.describe(log_root)
        rows = await db.fetchall("SELECT device_id, COUNT(*) FROM events GROUP BY device_id ORDER BY device_id")
        assert [tuple(map(int, r)) for r in rows] == [(BAD, 1), (GOOD, 2)]
    finally:
        await db.close()


@pytest.mark.parametrize(
    "stray, described",
    [
        (b"2019-05-10 14:16:21 | device=7001 | sensors=3 | 11922:5.0", "pipe-delimited sync log"),
        (b'{"hello": "world"}', "not an event"),
    ],
)
async def test_a_stray_line_in_the_middle_of_a_file_is_named(app_client, log_root, stray, described):
    await write_log(log_root, [push(BAD, f"2026-05-01 10:0{i}:00", str(i)) for i in range(3)])
    await write_log(log_root, [push(GOOD, "2026-05-01 10:00:00", "5.0")])
    [path] = [p for p in (log_root / str(BAD)).iterdir() if p.suffix == ".log"]
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + stray + b"\n" + b"".join(lines[1:]))  # a stray line between two events
    client = await app_client()
    await wait_projected(client, GOOD, "5.0")
    [stopped] = (await get(client, "/api/ready"))["checks"]["projection"]["stoppedDevices"]
    assert (stopped["deviceId"], stopped["line"], stopped["eventId"]) == (BAD, 2, None)
    assert described in stopped["reason"]
    assert path == log_path(log_root, BAD, path.name[-14:-4])
    assert path.exists()  # nothing was moved aside: the line is in the middle of a real log file
