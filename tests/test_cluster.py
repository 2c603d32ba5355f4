"""Cluster mode against real processes: a 3-server NATS JetStream cluster and two `tlink-push serve` nodes
sharing one MariaDB database and one log root.

- pushes spread over both nodes; `kill -9` of one node in the middle of the load, then, once the
  other node owns every partition (the time that took is printed), of one NATS server: every
  acknowledged push is exactly once in the files, the events table and the readings, `verify`
  passes, and a replay of the files gives the read models the cluster built;
- a node paused (SIGSTOP) past its lease, then resumed, appends nothing: another node took its
  partitions and wrote what it had been sent; afterwards the live stream of one node shows the
  pushes the other node writes, and either node answers a device's history the same.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from eventlog.verify import verify
from ops.nats_cluster import NatsCluster
from ops.private_mariadb import query
from ops.service_node import ServiceNode
from projections.db import connect
from projections.replay import replay_logs
from projections.schema import READ_MODEL_TABLES
from tests.conftest import dump, fixture_bytes, logged_sequence_numbers, mysql_database_url

pytestmark = [
    pytest.mark.mysql, pytest.mark.slow,
    pytest.mark.usefixtures("nats_server"),
]  # fmt: skip

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
LEASE_SECONDS = 3.0
PARTITIONS = 16
DEVICES = 40


def upload(i: int) -> bytes:
    """A push of its own (body field `seq` = i) for one of DEVICES devices."""
    body = copy.deepcopy(SAMPLE)
    body["deviceId"] = 7000 + i % DEVICES
    body["time"] = f"2019-06-{10 + i // 3600:02d} {i // 60 % 60:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
    body["seq"] = i
    for entry in body["sensorsDates"]:
        entry["times"], entry["value"] = body["time"][11:], str(i)
        entry["sensorsId"] = body["deviceId"] * 10 + entry["sensorsId"] % 10
    return orjson.dumps(body)


@pytest.fixture
def database() -> Iterator[str]:
    yield from mysql_database_url()


def start_nodes(workdir: Path, url: str, bus: str, *ids: str) -> list[ServiceNode]:
    env = {"BUS_LEASE_SECONDS": str(LEASE_SECONDS), "BUS_REPLICAS": "3", "BUS_PARTITIONS": str(PARTITIONS),
           "BUS_NAME": f"t{uuid.uuid4().hex[:8]}"}  # fmt: skip
    nodes = [ServiceNode(workdir, url, bus, node_id, env=env) for node_id in ids]
    try:
        for node in nodes:
            node.start()
            node.wait_ready()
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


def bus_state(node: ServiceNode) -> dict[str, Any]:
    status, body = node.get("/api/ready")
    assert status in (200, 503), body
    state: dict[str, Any] = orjson.loads(body)["checks"]["bus"]
    return state


def owned(node: ServiceNode) -> set[int]:
    return {p["partition"] for p in bus_state(node)["partitions"]}


def wait_for(what: str, condition: Any, seconds: float = 90.0) -> float:
    """Wait until `condition()` holds; how long it took (the test fails if it never does)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds:g} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def written_up(nodes: list[ServiceNode]) -> bool:
    """Every partition owned, every message written, every line projected."""
    states = [orjson.loads(node.get("/api/ready")[1]) for node in nodes]
    partitions = [p for state in states for p in state["checks"]["bus"]["partitions"]]
    return (
        sorted(p["partition"] for p in partitions) == list(range(PARTITIONS))
        and all(p["lag"] == 0 for p in partitions)
        and all(state["status"] == "ready" for state in states)
    )





def log_lines(root: Path) -> int:
    return len(logged_sequence_numbers(root))


async def push_all(targets: list[ServiceNode], numbers: Iterable[int], acknowledged: dict[int, dict[str, Any]],
                   concurrency: int = 16) -> None:  # fmt: skip
    """Push `numbers` over the targets (in turn, the next one when a node does not answer) at `concurrency`."""
    queue = iter(numbers)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            for i in queue:
                for attempt in range(len(targets)):
                    node = targets[(i + attempt) % len(targets)]
                    if node.process is None or node.process.poll() is not None:
                        continue
                    try:
                        async with session.post(f"{node.url}/api/webhooks/tlink", data=upload(i)) as resp:
                            if resp.status == 200:
                                acknowledged[i] = await resp.json()
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        continue

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def streamed_ids(node: ServiceNode, user_id: int, opened: asyncio.Event, wanted: asyncio.Future[set[str]],
                       seconds: float = 60.0) -> set[str]:  # fmt: skip
    """The event ids a node's live stream of the user sends, until it has sent every id `wanted` gives."""
    got: set[str] = set()
    async with aiohttp.ClientSession() as session, session.get(f"{node.url}/api/users/{user_id}/stream") as resp:
        assert resp.status == 200
        opened.set()
        async with asyncio.timeout(seconds):
            async for line in resp.content:
                if line.startswith(b"id: "):
                    got.add(line[4:].strip().decode())
                if wanted.done() and wanted.result() <= got:
                    break
    return got





async def test_kill_a_node_then_a_nats_server_loses_nothing_and_doubles_nothing(tmp_path, database):
    root = tmp_path / "logs"
    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        a, b = start_nodes(tmp_path, database, cluster.url, "a", "b")
        try:
            wait_for("both nodes own partitions", lambda: owned(a) and owned(b) and len(owned(a) | owned(b)) == 16)
            acknowledged: dict[int, dict[str, Any]] = {}
            loading = asyncio.create_task(push_all([a, b], range(0, 3000), acknowledged))
            while len(acknowledged) < 600 and not loading.done():
                await asyncio.sleep(0.01)
            partitions_of_a = owned(a) if a.get("/api/health")[0] == 200 else set()
            a.kill()
            killed = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(
                None, wait_for, "node b owns every partition", lambda: len(owned(b)) == PARTITIONS
            )
            failover = time.monotonic() - killed
            print(f"\npartitions {sorted(partitions_of_a)} of the killed node owned again {failover:.1f} s after"
                  f" the kill (lease {LEASE_SECONDS:g} s), under load")  # fmt: skip
            more = len(acknowledged) + 300
            while len(acknowledged) < more and not loading.done():
                await asyncio.sleep(0.01)
            cluster.kill(0)
            await loading
            await asyncio.get_running_loop().run_in_executor(None, wait_for, "all written", lambda: written_up([b]))
            assert len(acknowledged) >= 900
            assert any(answer["projected"] for answer in acknowledged.values())
            assert any(not answer["projected"] for answer in acknowledged.values())

            logged = logged_sequence_numbers(root)
            assert len(logged) == len(set(logged)), "an event was logged twice"
            assert set(acknowledged) <= set(logged), "an acknowledged push is missing from the log"
            events = query(database, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events")
            assert events == [(len(logged), len(logged))]
            assert query(database, "SELECT COUNT(*) FROM sensor_readings") == [(3 * len(logged),)]
            stored = {row[0] for row in query(database, "SELECT event_id FROM events")}
            new = {answer["eventId"] for answer in acknowledged.values() if not answer["duplicate"]}
            assert new <= stored, "an acknowledged event id is not the one stored"
            earlier = {answer["eventId"] for answer in acknowledged.values() if answer["duplicate"]}
            assert earlier <= stored | {None}, "a duplicate is answered with an event id that is not stored"
        finally:
            a.kill()
            b.stop()
    assert verify(root).ok

    built = await dump(database, (*READ_MODEL_TABLES, "log_files", "log_blocks", "events"))
    db = await connect(database)
    try:
        await replay_logs(db, root)
    finally:
        await db.close()
    replayed = await dump(database, (*READ_MODEL_TABLES, "log_files", "log_blocks", "events"))
    for table, rows in built.items():
        assert replayed[table] == rows, f"{table}: replay differs from what the cluster built"


async def test_a_node_paused_past_its_lease_appends_nothing_when_resumed(tmp_path, database):
    root = tmp_path / "logs"
    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        a, b = start_nodes(tmp_path, database, cluster.url, "a", "b")
        try:
            wait_for("both nodes own partitions", lambda: owned(a) and owned(b) and len(owned(a) | owned(b)) == 16)
            acknowledged: dict[int, dict[str, Any]] = {}
            await push_all([a, b], range(0, 200), acknowledged)
            a.pause()
            # Pushes for every device while node a is stopped: those of its partitions reach it (a pull it had
            # asked for) or wait on the bus, until node b takes its partitions once its leases lapse.
            await push_all([b], range(200, 600), acknowledged)
            await asyncio.get_running_loop().run_in_executor(
                None, wait_for, "node b owns every partition", lambda: len(owned(b)) == PARTITIONS
            )
            await asyncio.get_running_loop().run_in_executor(None, wait_for, "all written", lambda: written_up([b]))
            lines = log_lines(root)
            a.resume()
            await asyncio.sleep(3 * LEASE_SECONDS)  # node a runs again: whatever it held in memory, it must not write
            assert log_lines(root) == lines, "the resumed node appended"
            await asyncio.get_running_loop().run_in_executor(
                None, wait_for, "both own partitions again", lambda: written_up([a, b]) and owned(a) and owned(b)
            )
            await push_all([a, b], range(600, 800), acknowledged)
            await asyncio.get_running_loop().run_in_executor(None, wait_for, "all written", lambda: written_up([a, b]))
            # The live stream of a node shows what the other node writes, once its read models show it.
            of_b = [i for i in range(800, 1000) if (7000 + i % DEVICES) % PARTITIONS in owned(b)][:40]
            opened, wanted = asyncio.Event(), asyncio.get_running_loop().create_future()
            streaming = asyncio.create_task(streamed_ids(a, SAMPLE["deviceUserid"], opened, wanted))
            await opened.wait()
            pushed: dict[int, dict[str, Any]] = {}
            await push_all([b], of_b, pushed)
            wanted.set_result({answer["eventId"] for answer in pushed.values()})
            assert wanted.result() <= await streaming
            acknowledged.update(pushed)
            await asyncio.get_running_loop().run_in_executor(None, wait_for, "all written", lambda: written_up([a, b]))
            for device_id in (7000, 7001, 7002, 7003):  # any node answers any read, whoever writes the device
                path = f"/api/users/{SAMPLE['deviceUserid']}/devices/{device_id}/history?historyLimit=1000"
                (status_a, on_a), (status_b, on_b) = a.get(path), b.get(path)
                assert status_a == status_b == 200
                assert orjson.loads(on_a) == orjson.loads(on_b)
                readings = sum(len(sensor["history"]) for sensor in orjson.loads(on_a)["sensors"])
                assert readings == 3 * len([i for i in acknowledged if 7000 + i % DEVICES == device_id])
        finally:
            a.stop()
            b.stop()
    logged = logged_sequence_numbers(root)
    assert sorted(logged) == sorted(acknowledged) == sorted([*range(800), *of_b])
    total = len(acknowledged)
    assert query(database, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events") == [(total, total)]
    assert verify(root).ok
    print("\n" + "".join(line for line in a.log_file.read_text().splitlines(keepends=True)
                         if "lost partition" in line or "not appended" in line)[-2000:])  # fmt: skip
