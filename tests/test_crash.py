"""kill -9 of a running server in the middle of concurrent pushes, then a restart."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from eventlog.verify import verify
from ops.bench_common import free_port
from ops.private_mariadb import query
from tests.conftest import fixture_bytes, logged_sequence_numbers, mysql_database_url

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
TLINK_PUSH = str(Path(sys.executable).with_name("tlink-push"))


def upload(i: int) -> bytes:
    body = copy.deepcopy(SAMPLE)
    body["deviceId"] = 5000 + i % 25
    body["time"] = f"2019-05-{10 + i // 3600:02d} {i // 60 % 60:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
    body["seq"] = i  # an unknown vendor field: kept, and it makes every body unique
    for entry in body["sensorsDates"]:
        entry["times"], entry["value"] = body["time"][11:], str(i)
        entry["sensorsId"] = body["deviceId"] * 10 + entry["sensorsId"] % 10
    return orjson.dumps(body)


def start_server(workdir: Path, url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "USE_HTTPS": "false", "SYNC_LOG_DIR": "logs",
           "LOG_LEVEL": "WARNING", "TLINK_SYNC_ENABLED": "false"}  # fmt: skip
    return subprocess.Popen([TLINK_PUSH, "serve"], cwd=workdir, env=env, stdout=subprocess.DEVNULL)


async def wait_until_up(session: aiohttp.ClientSession, port: int) -> None:
    for _ in range(200):
        try:
            async with session.post(f"http://127.0.0.1:{port}/api/webhooks/tlink", data=b"{}") as resp:
                if resp.status == 400:
                    return
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


async def push_until_killed(port: int, server: subprocess.Popen[bytes], total: int, kill_after: int) -> set[int]:
    acknowledged: set[int] = set()
    queue = iter(range(total))
    async with aiohttp.ClientSession() as session:
        await wait_until_up(session, port)

        async def worker() -> None:
            for i in queue:
                if len(acknowledged) == kill_after and server.poll() is None:
                    server.send_signal(signal.SIGKILL)
                try:
                    async with session.post(f"http://127.0.0.1:{port}/api/webhooks/tlink", data=upload(i)) as resp:
                        if resp.status == 200:
                            acknowledged.add(i)
                except aiohttp.ClientError:
                    pass

        await asyncio.gather(*(worker() for _ in range(16)))
    return acknowledged





async def test_kill_9_loses_no_acknowledged_push_and_doubles_none(tmp_path):
    urls = mysql_database_url()
    url = next(urls)
    port = free_port()
    server = start_server(tmp_path, url, port)
    try:
        acknowledged = await push_until_killed(port, server, total=3000, kill_after=700)
    finally:
        server.kill()
        server.wait()
    assert len(acknowledged) >= 700

    port = free_port()
    server = start_server(tmp_path, url, port)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_up(session, port)
        logged = logged_sequence_numbers(tmp_path / "logs")
        assert len(logged) == len(set(logged)), "an event was logged twice"
        assert acknowledged <= set(logged), "an acknowledged push is missing from the log"
        for _ in range(100):
            if query(url, "SELECT COUNT(*) FROM events") == [(len(logged),)]:
                break
            await asyncio.sleep(0.1)
        assert query(url, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events") == [(len(logged), len(logged))]
        readings = query(url, "SELECT COUNT(*) FROM sensor_readings")[0][0]
        assert readings == 3 * len(logged)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        for _ in urls:
            pass
    assert verify(tmp_path / "logs").ok
