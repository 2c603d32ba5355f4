"""SIGTERM under load: every acknowledged push is in the log and the events table exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from contextlib import closing

import aiohttp
import orjson
import pytest

from eventlog.files import device_days, device_ids, log_path
from tests.conftest import fixture_bytes
from tests.test_https_process import ServiceProcess

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
PUSHES = 200
CONCURRENCY = 16
TERMINATE_AFTER = 60  # answers received before SIGTERM is sent


def unique_body(n: int) -> bytes:
    """The sample push for one of four devices, made unique by its rawData."""
    return orjson.dumps({**SAMPLE, "deviceId": 2864 + n % 4, "rawData": f"shutdown-probe-{n}"})


async def push_all(proc: ServiceProcess) -> dict[str, str]:
    """Fire the pushes, SIGTERM midway; returns rawData -> eventId of every 200 answer."""
    acked: dict[str, str] = {}
    answered = asyncio.Event()
    gate = asyncio.Semaphore(CONCURRENCY)
    url = f"{proc.url}/api/webhooks/tlink"

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        async with gate:
            try:
                async with session.post(url, data=unique_body(n)) as resp:
                    if resp.status == 200:
                        acked[f"shutdown-probe-{n}"] = (await resp.json())["eventId"]
            except (TimeoutError, aiohttp.ClientError):
                return  # not answered: the client would retry
            if len(acked) >= TERMINATE_AFTER:
                answered.set()

    async def terminate_midway() -> None:
        await answered.wait()
        assert proc.proc is not None
        proc.proc.terminate()

    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        killer = asyncio.create_task(terminate_midway())
        await asyncio.gather(*(one(session, n) for n in range(PUSHES)))
        killer.cancel()
    return acked


def logged_events(root) -> list[tuple[str, str]]:
    """(rawData, event id) of every line of every device log."""
    found = []
    for device_id in device_ids(root):
        for day in device_days(root, device_id):
            for raw in log_path(root, device_id, day).read_bytes().splitlines():
                line = orjson.loads(raw)
                found.append((line["body"]["rawData"], line["id"]))
    return found


def events_in_table(workdir) -> dict[str, int]:
    """event_id -> rows with that id in the service's SQLite events table."""
    with closing(sqlite3.connect(workdir / "tlink.db")) as db:
        return dict(db.execute("SELECT event_id, COUNT(*) FROM events GROUP BY event_id").fetchall())


async def wait_caught_up(proc: ServiceProcess) -> None:
    """Wait until the projector has applied the whole log."""
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(f"{proc.url}/metrics") as resp:
                text = await resp.text()
            if "tlink_projection_devices_behind 0.0" in text and "tlink_projection_queued_events 0.0" in text:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("projection did not catch up")


@pytest.mark.slow
async def test_sigterm_mid_load_loses_and_duplicates_no_acknowledged_push(tmp_path):
    proc = ServiceProcess(tmp_path, USE_HTTPS="false")
    try:
        proc.start()
        await proc.wait_ready()
        acked = await push_all(proc)
        assert proc.proc is not None
        assert proc.proc.wait(20) == 0, proc.stderr()
    finally:
        proc.kill()
    assert TERMINATE_AFTER <= len(acked), "the service stopped before the test could send SIGTERM"
    assert "shutting down" in proc.stderr() and "stopped" in proc.stderr()
    # Answered pushes were projected before their answer; shutdown kept them.
    assert set(acked.values()) <= events_in_table(tmp_path).keys()

    logged = logged_events(tmp_path / "logs")
    times_logged = Counter(raw for raw, _ in logged)
    ids = dict(logged)
    for raw, event_id in acked.items():
        assert times_logged[raw] == 1, raw
        assert ids[raw] == event_id
    assert max(times_logged.values()) == 1
    assert not list((tmp_path / "logs").glob("*/*.torn"))

    restarted = ServiceProcess(tmp_path, USE_HTTPS="false")
    try:
        restarted.start()
        await restarted.wait_ready()
        await wait_caught_up(restarted)
        assert restarted.terminate() == 0
    finally:
        restarted.kill()
    in_table = events_in_table(tmp_path)
    assert set(in_table) == {event_id for _, event_id in logged}
    assert set(in_table.values()) == {1}
    assert set(acked.values()) <= set(in_table)
