"""Crash cycles: kill -9 the service (or its database) again and again under load, then check nothing was lost.

    python -m ops.crash_cycles --cycles 100 [--sqlite | --db-outage] [--clients 16] [--devices 40] [--seed S]

Runs the real `tlink-push serve` (plain HTTP, its own temporary working folder, a free
port) while concurrent HTTP clients in this process send distinct pushes (bodies
shaped like tests/fixtures/sample_push.json, spread over many devices) as fast as
they can. Each cycle lets the load run for a random 0.3 to 2 s, then:

- default (MariaDB; a database of its own on TEST_MYSQL_URL's server, dropped at the
  end) and `--sqlite`: `kill -9` the service and start it again;
- `--db-outage`: `kill -9` a private `mariadbd` (the service keeps running and keeps
  accepting pushes), keep the load on it for another random 0.3 to 2 s, then start the
  database again; `--also-kill-service` also kills and restarts the service during the
  outage.

Clients record every push answered 2xx (its event id) and every request whose outcome
is unknown (the connection broke after the request was sent, or a 5xx): such a push may
or may not be stored. Like TLINK, they deliver it again (`--redeliver` times at most),
so the service's duplicate detection is exercised too: by default once the restarted
service's /api/ready answers 200 (it has caught up with its log), with `--redeliver-at
restart` as soon as it answers at all, which is inside the window the README leaves
open to duplicates (the moments after a crash, before the projection has caught up).

At the end the service is stopped cleanly once the read models have caught up, and:

- every acknowledged push is in the log files exactly once (counted by event id and by
  body), with the body it was sent with, in `events` exactly once, and each of its
  readings in `sensor_readings` under (device_id, sensor_id, recorded_at);
- no body is on more than one line (the duplicate detection held), no event id is on
  two lines, every line is in `events` and `events` holds nothing else;
- every torn tail the service moved aside at start-up was reported in its log;
- `tlink-push verify` exits 0.

Prints a table, writes the figures as JSON to `--out` (default ops/results/) as
crash_cycles-<mode>-<UTC timestamp>.json, and exits 1 if anything was lost,
duplicated, left unprojected or unreported, or verify failed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pymysql

from ops.bench_common import PROJECT, RESULTS, TLINK_PUSH, code_version, free_port, machine_facts, table
from ops.private_mariadb import PrivateMariaDB, available
from projections.db import DatabaseUrl, mysql_connect, mysql_url, parse_database_url

SAMPLE: dict[str, Any] = orjson.loads((PROJECT / "tests" / "fixtures" / "sample_push.json").read_bytes())
DEFAULT_MYSQL_SERVER = "mysql://root@127.0.0.1:3306/test"  # the database part is not used
FIRST_DEVICE = 7000
FIRST_TIME = datetime(2024, 1, 1)  # body `time` of a device's first push; each next one is a second later
SENSORS = 3  # readings per push, as in the sample
WEBHOOK = "/api/webhooks/tlink"
TORN_MESSAGE = "torn log tail moved aside"
MARIADB, SQLITE, OUTAGE = "mariadb", "sqlite", "db-outage"


# ---------------------------------------------------------------- pushes


def push_body(seq: int, device_id: int, n: int) -> dict[str, Any]:
    """The n-th push of a device (the seq-th of the run): a unique body, readings at a unique time."""
    body = copy.deepcopy(SAMPLE)
    stamp = (FIRST_TIME + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S")
    body["deviceId"] = device_id
    body["deviceUserid"] = 300 + device_id % 7
    body["time"] = stamp
    body["crashSeq"] = seq  # an unknown vendor field: kept as received
    for k, entry in enumerate(body["sensorsDates"][:SENSORS], start=1):
        entry["times"] = stamp[11:]
        entry["sensorsId"] = device_id * 10 + k
        entry["value"] = f"{seq}.{k}"
        entry["reVal"] = f"{n % 1000}.{k:04d}"
    return body


def body_key(body: Any) -> str:
    """A body's identity whatever its key order (what the service's duplicate detection goes by)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


ReadingKey = tuple[int, int, str]  # (device_id, sensor_id, recorded_at 'YYYY-MM-DD HH:MM:SS')


def expected_readings(body: dict[str, Any]) -> dict[ReadingKey, str]:
    """The readings a push must leave in sensor_readings, with their values."""
    return {(body["deviceId"], e["sensorsId"], body["time"]): e["value"] for e in body["sensorsDates"]}


@dataclass(slots=True)
class Push:
    """One distinct push body and what became of each delivery of it."""

    seq: int
    device_id: int
    n: int
    acked: list[str] = field(default_factory=list)  # event ids of the 2xx answers
    duplicate_answers: int = 0  # 2xx answers saying `"duplicate": true`
    unprojected_answers: int = 0  # 2xx answers saying `"projected": false` (left for the projector to catch up)
    unknown: int = 0  # deliveries whose outcome is unknown
    deliveries: int = 0

    def body(self) -> dict[str, Any]:
        return push_body(self.seq, self.device_id, self.n)


@dataclass(slots=True)
class Ledger:
    """Everything the clients sent and were told."""

    pushes: list[Push] = field(default_factory=list)
    next_time: dict[int, int] = field(default_factory=dict)  # device -> n of its next push
    answers: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    refused: int = 0  # connection refused: nothing was sent
    unknown: int = 0  # sent, then no answer (connection broke) or a 5xx
    redeliveries: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # exception type of unknown outcomes
    bad_answers: list[str] = field(default_factory=list)  # 4xx and malformed 2xx answers (first few)

    def new_push(self, rng: random.Random, devices: int) -> Push:
        device_id = FIRST_DEVICE + rng.randrange(devices)
        n = self.next_time.get(device_id, 0)
        self.next_time[device_id] = n + 1
        push = Push(seq=len(self.pushes), device_id=device_id, n=n)
        self.pushes.append(push)
        return push


# ---------------------------------------------------------------- processes


class ServiceDown(RuntimeError):
    """The service did not come up (or died at start)."""


class Service:
    """`tlink-push serve` in its own working folder; restarted on the same port after each kill."""

    def __init__(self, workdir: Path, database_url: str, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_file = workdir / "service.log"
        self.env = {
            **os.environ, "DATABASE_URL": database_url, "SYNC_LOG_DIR": "logs", "USE_HTTPS": "false",
            "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "INFO", "LOG_FORMAT": "json",
            "ACCESS_LOG": "false", "TLINK_SYNC_ENABLED": "false", "AUTO_APPLY_SCHEMA": "true", "API_KEYS": "",
            "WEBHOOK_TOKEN": "", "PUSH_WEBHOOK_SECRET": "",
        }  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        with open(self.log_file, "ab") as errors:
            self.process = subprocess.Popen(
                [str(TLINK_PUSH), "serve"], cwd=self.workdir, env=self.env, stdout=subprocess.DEVNULL, stderr=errors
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut of the process would stop it."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; the exit status (None if it had to be killed)."""
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    async def wait_up(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> float:
        """Seconds until /api/health answers; ServiceDown if the process exits or it takes too long."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process is None or self.process.poll() is not None:
                raise ServiceDown(f"the service exited at start-up:\n{self.log_tail()}")
            try:
                async with session.get(self.base + "/api/health") as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.02)
        raise ServiceDown(f"the service did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def verify(self) -> tuple[int, str]:
        """`tlink-push verify` against the same log root and database: exit status and output."""
        done = subprocess.run(
            [str(TLINK_PUSH), "verify"], cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=600
        )
        return done.returncode, (done.stdout + done.stderr).strip()

    def log_tail(self, chars: int = 3000) -> str:
        with suppress(OSError):
            return self.log_file.read_text(errors="replace")[-chars:]
        return ""


@contextmanager
def mysql_database(server_url: str) -> Iterator[str]:
    """A new database on the server, dropped afterwards; yields its URL."""
    server = parse_database_url(server_url)
    name = f"tlink_crash_{uuid.uuid4().hex[:10]}"
    _admin(server, f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    try:
        yield mysql_url(server, name)
    finally:
        _admin(server, f"DROP DATABASE IF EXISTS {name}")


def _admin(server: DatabaseUrl, statement: str) -> None:
    """Run one statement on a connection of its own to the server."""
    admin = mysql_connect(server, None, autocommit=True)
    try:
        admin.cursor().execute(statement)
    finally:
        admin.close()


# ---------------------------------------------------------------- the run


@dataclass
class Config:
    mode: str
    cycles: int
    clients: int
    devices: int
    seed: int
    min_load: float
    max_load: float
    redeliver: int
    redeliver_at: str
    also_kill_service: bool
    out: Path
    keep: bool


@dataclass
class Cycle:
    load_seconds: float
    down_seconds: float  # service: kill until it answers again; outage: kill until the database answers again
    acknowledged: int  # 2xx answers during the cycle


class Run:
    """Clients, the kill loop, and the record of both."""

    def __init__(self, config: Config, service: Service, mariadb: PrivateMariaDB | None) -> None:
        self.config = config
        self.service = service
        self.mariadb = mariadb
        self.rng = random.Random(config.seed)
        self.ledger = Ledger()
        self.cycles: list[Cycle] = []
        self.parked: list[Push] = []  # pushes of unknown outcome waiting to be delivered again
        self.caught_up = asyncio.Event()  # /api/ready said 200 since the last kill
        self.watcher: asyncio.Task[None] | None = None
        self.stopping = False  # clients send no new pushes, only redeliveries
        self.give_up_at = float("inf")  # when clients stop waiting to deliver parked pushes again
        self.aborted = False  # the service or the database did not come back: clients give up
        self.acks = 0

    def next_push(self) -> Push | None:
        """A parked push to deliver again (once allowed), a new one, or None: this client is done."""
        if self.parked and (self.config.redeliver_at == "restart" or self.caught_up.is_set()):
            self.ledger.redeliveries += 1
            return self.parked.pop(0)
        if not self.stopping:
            return self.ledger.new_push(self.rng, self.config.devices)
        return None

    async def client(self, session: aiohttp.ClientSession) -> None:
        url = self.service.base + WEBHOOK
        while not self.aborted:
            push = self.next_push()
            if push is None:
                if not self.parked or time.monotonic() > self.give_up_at:
                    return
                await asyncio.sleep(0.05)
                continue
            data = orjson.dumps(push.body())
            while not self.aborted:  # until the request reaches a listening service
                try:
                    push.deliveries += 1
                    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
                        await self.record_answer(push, resp)
                    break
                except aiohttp.ClientConnectorError:
                    push.deliveries -= 1
                    self.ledger.refused += 1
                    await asyncio.sleep(0.01)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.record_unknown(push, type(exc).__name__)
                    await asyncio.sleep(0.01)
                    break

    async def record_answer(self, push: Push, resp: aiohttp.ClientResponse) -> None:
        self.ledger.answers[resp.status] += 1
        if resp.status >= 500:  # the line may be on disk even so: a TLINK retry decides
            self.record_unknown(push, f"HTTP {resp.status}")
            return
        text = await resp.text()
        try:
            answer = json.loads(text)
            event_id = answer["eventId"] if 200 <= resp.status < 300 else None
        except (ValueError, KeyError, TypeError):
            event_id = None
        if not isinstance(event_id, str):
            if len(self.ledger.bad_answers) < 20:
                self.ledger.bad_answers.append(f"seq {push.seq}: HTTP {resp.status} {text[:300]}")
            return
        push.acked.append(event_id)
        push.duplicate_answers += bool(answer.get("duplicate"))
        push.unprojected_answers += answer.get("projected") is False
        self.acks += 1

    def record_unknown(self, push: Push, why: str) -> None:
        push.unknown += 1
        self.ledger.unknown += 1
        self.ledger.errors[why] += 1
        if push.unknown <= self.config.redeliver:
            self.parked.append(push)

    def killed(self) -> None:
        """Redeliveries wait (with --redeliver-at ready) until the service says it has caught up again."""
        self.caught_up.clear()
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None

    def watch(self, session: aiohttp.ClientSession) -> None:
        async def until_ready() -> None:
            while True:
                with suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.service.base + "/api/ready") as resp:
                        if resp.status == 200:
                            self.caught_up.set()
                            return
                await asyncio.sleep(0.05)

        self.watcher = asyncio.create_task(until_ready())

    async def restart_service(self, session: aiohttp.ClientSession) -> None:
        self.service.kill()
        self.killed()
        self.service.start()
        await self.service.wait_up(session)

    async def kill_loop(self, session: aiohttp.ClientSession) -> None:
        config = self.config
        for _ in range(config.cycles):
            acks_before = self.acks
            load = self.rng.uniform(config.min_load, config.max_load)
            await asyncio.sleep(load)
            killed = time.monotonic()
            if self.mariadb is None:
                await self.restart_service(session)
            else:
                await asyncio.to_thread(self.mariadb.kill)
                self.killed()
                outage = self.rng.uniform(config.min_load, config.max_load)
                if config.also_kill_service:
                    await asyncio.sleep(self.rng.uniform(0, outage))
                    await self.restart_service(session)
                await asyncio.sleep(max(0.0, killed + outage - time.monotonic()))
                await asyncio.to_thread(self.mariadb.start)
            self.watch(session)
            self.cycles.append(Cycle(load, time.monotonic() - killed, self.acks - acks_before))

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.config.clients + 4)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.service.start()
            await self.service.wait_up(session)
            self.watch(session)
            clients = [asyncio.create_task(self.client(session)) for _ in range(self.config.clients)]
            try:
                await self.kill_loop(session)
            except BaseException:
                self.aborted = True
                raise
            finally:
                self.stopping = True
                self.give_up_at = time.monotonic() + 120
                done = await asyncio.gather(*clients, return_exceptions=True)
                self.killed()
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def wait_caught_up(self, seconds: float = 180.0, settle: float = 1.5) -> dict[str, Any]:
        """Wait until /api/ready says the read models hold the whole log, and still says so `settle`
        seconds later (longer than the projector's retry interval); its last answer."""
        answer: dict[str, Any] = {}
        ready_since: float | None = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ok = False
                with suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(self.service.base + "/api/ready") as resp:
                        answer = await resp.json()
                        projection = answer.get("checks", {}).get("projection", {})
                        ok = resp.status == 200 and projection.get("queuedEvents") == 0
                now = time.monotonic()
                ready_since = (ready_since or now) if ok else None
                if ready_since is not None and now - ready_since >= settle:
                    return answer
                await asyncio.sleep(0.25)
        return answer


# ---------------------------------------------------------------- checks


@dataclass
class Stored:
    """What the log files hold."""

    lines: int = 0
    by_id: Counter[str] = field(default_factory=Counter)
    by_body: dict[str, list[str]] = field(default_factory=dict)  # body key -> event ids of its lines
    bodies: dict[str, Any] = field(default_factory=dict)  # event id -> body
    unreadable: list[str] = field(default_factory=list)
    torn_files: dict[str, int] = field(default_factory=dict)  # quarantine file (relative) -> bytes
    torn_ids: set[str] = field(default_factory=set)  # event ids found in quarantined bytes


def read_logs(root: Path) -> Stored:
    """Every line of every device file, read with nothing but a JSON parser."""
    stored = Stored()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        for path in sorted(folder.iterdir()):
            if path.name.endswith(".log.torn"):
                data = path.read_bytes()
                stored.torn_files[str(path.relative_to(root))] = len(data)
                for raw in data.splitlines():
                    with suppress(ValueError, TypeError, KeyError):
                        stored.torn_ids.add(str(orjson.loads(raw)["id"]))
                continue
            if not path.name.endswith(".log"):
                continue
            for number, raw in enumerate(path.read_bytes().split(b"\n")[:-1], start=1):
                try:
                    doc = orjson.loads(raw)
                    event_id, body = str(doc["id"]), doc["body"]
                except (ValueError, TypeError, KeyError) as exc:
                    stored.unreadable.append(f"{path.relative_to(root)}:{number}: {exc}")
                    continue
                stored.lines += 1
                stored.by_id[event_id] += 1
                stored.by_body.setdefault(body_key(body), []).append(event_id)
                stored.bodies[event_id] = body
    return stored


@dataclass
class Projected:
    """What the database holds."""

    events: Counter[str]
    readings: dict[ReadingKey, tuple[str, str | None]]  # key -> (event_id, value)


def read_database(database_url: str, workdir: Path) -> Projected:
    url = parse_database_url(database_url)
    events_sql = "SELECT event_id FROM events"
    readings_sql = "SELECT device_id, sensor_id, recorded_at, event_id, value FROM sensor_readings"
    if url.kind == "sqlite":
        assert url.path is not None
        conn = sqlite3.connect(f"file:{workdir / url.path}?mode=ro", uri=True)
        try:
            events = [r[0] for r in conn.execute(events_sql)]
            readings = list(conn.execute(readings_sql))
        finally:
            conn.close()
    else:
        mconn = mysql_connect(url, url.database)
        try:
            with mconn.cursor() as cur:
                cur.execute(events_sql)
                events = [r[0] for r in cur.fetchall()]
                cur.execute(readings_sql)
                readings = list(cur.fetchall())
        finally:
            mconn.close()
    return Projected(
        events=Counter(str(e) for e in events),
        readings={
            (int(d), int(s), str(at).replace("T", " ")[:19]): (str(e), None if v is None else str(v))
            for d, s, at, e, v in readings
        },
    )


@dataclass
class Torn:
    repaired: int = 0  # repairs the service reported
    reported_bytes: int = 0
    files: int = 0
    unreported: list[str] = field(default_factory=list)


def torn_report(service_log: Path, root: Path, stored: Stored) -> Torn:
    """Compare the repairs the service logged with the quarantine files found."""
    torn = Torn(files=len(stored.torn_files))
    reported: dict[str, tuple[int, int]] = {}  # quarantine (relative) -> (repairs, bytes)
    for raw in service_log.read_bytes().splitlines() if service_log.exists() else []:
        try:
            record = orjson.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("msg", "")).startswith(TORN_MESSAGE):
            quarantine = Path(str(record.get("quarantine", "")))
            name = str(quarantine.relative_to("logs")) if not quarantine.is_absolute() else str(quarantine)
            count, moved = reported.get(name, (0, 0))
            reported[name] = (count + 1, moved + int(record.get("bytes", 0)))
            torn.repaired += 1
            torn.reported_bytes += int(record.get("bytes", 0))
    for name, size in sorted(stored.torn_files.items()):
        count, moved = reported.get(name, (0, 0))
        if not moved <= size <= moved + count:  # each repair may add a newline to what it moved
            torn.unreported.append(f"{name}: {size} bytes, {moved} reported in {count} repairs")
    return torn


def service_log_summary(service_log: Path) -> dict[str, int]:
    """Warnings and errors the service logged, by level and message."""
    found: Counter[str] = Counter()
    for raw in service_log.read_bytes().splitlines() if service_log.exists() else []:
        try:
            record = orjson.loads(raw)
        except ValueError:
            if raw.strip():
                found["(not a JSON record)"] += 1
            continue
        if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            found[f"{record['level']}: {record.get('msg')}"] += 1
    return dict(found.most_common())


def check(ledger: Ledger, stored: Stored, projected: Projected) -> dict[str, Any]:
    """Lost, duplicated and unprojected, counted per distinct push and per line."""
    lost: Counter[str] = Counter()
    examples: list[str] = []
    acknowledged = unknown_unresolved = unknown_stored = lost_from_files = 0

    def problem(kind: str, push: Push, detail: str = "") -> None:
        lost[kind] += 1
        if len(examples) < 20:
            examples.append(f"{kind}: seq {push.seq} device {push.device_id} {detail}".rstrip())

    for push in ledger.pushes:
        body = push.body()
        lines = stored.by_body.get(body_key(body), [])
        if not push.acked:
            if push.unknown:
                unknown_unresolved += 1
                unknown_stored += bool(lines)
            continue
        acknowledged += 1
        missing = False
        for event_id in sorted(set(push.acked)):
            if stored.by_id.get(event_id, 0) == 0:
                problem("acknowledged event id not in the files", push, event_id)
                lost_from_files += 1
                missing = True
            elif stored.bodies[event_id] != body:
                problem("stored body differs from the one sent", push, event_id)
                missing = True
            if projected.events.get(event_id, 0) == 0:
                problem("acknowledged event id not in events", push, event_id)
                missing = True
        for key, value in expected_readings(body).items():
            row = projected.readings.get(key)
            if row is None:
                problem("reading missing from sensor_readings", push, str(key))
                missing = True
            elif row[1] != value or row[0] not in lines:
                problem("reading in sensor_readings is another push's", push, f"{key}: {row}")
                missing = True
        if missing:
            lost["acknowledged pushes lost (any of the above)"] += 1
    duplicated = {
        "bodies on more than one line": sum(1 for ids in stored.by_body.values() if len(ids) > 1),
        "extra lines of those bodies": sum(len(ids) - 1 for ids in stored.by_body.values() if len(ids) > 1),
        "event ids on more than one line": sum(1 for c in stored.by_id.values() if c > 1),
        "event ids more than once in events": sum(1 for c in projected.events.values() if c > 1),
    }
    duplicate_examples = [
        f"event ids {ids}: {orjson.dumps(stored.bodies[ids[0]]).decode()[:200]}"
        for ids in stored.by_body.values()
        if len(ids) > 1
    ][:10]
    unprojected = [e for e in stored.by_id if e not in projected.events]
    phantom = [e for e in projected.events if e not in stored.by_id]
    reading_rows = len(projected.readings)
    return {
        "acknowledged": acknowledged,
        "unknown_unresolved": unknown_unresolved,
        "unknown_unresolved_stored": unknown_stored,
        "log_lines": stored.lines,
        "distinct_bodies_stored": len(stored.by_body),
        "events_rows": sum(projected.events.values()),
        "reading_rows": reading_rows,
        "expected_reading_rows": SENSORS * len(stored.by_body),
        "lost": dict(lost),
        "lost_examples": examples,
        "lost_pushes": lost["acknowledged pushes lost (any of the above)"],
        "lost_from_files": lost_from_files,
        "duplicated": duplicated,
        "duplicated_total": duplicated["extra lines of those bodies"]
        + duplicated["event ids on more than one line"]
        + duplicated["event ids more than once in events"],
        "duplicate_examples": duplicate_examples,
        "lines_not_in_events": len(unprojected),
        "events_not_in_files": len(phantom),
        "unreadable_lines": stored.unreadable[:20],
        "acknowledged_ids_in_torn_bytes": sum(1 for p in ledger.pushes for e in p.acked if e in stored.torn_ids),
    }


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m ops.crash_cycles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="kill -9 cycles (default 100)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--sqlite", action="store_true", help="the embedded SQLite database instead of MariaDB")
    where.add_argument("--db-outage", action="store_true",
                       help="kill -9 and restart a private mariadbd each cycle instead of the service")  # fmt: skip
    parser.add_argument("--also-kill-service", action="store_true",
                        help="with --db-outage: kill -9 and restart the service too, during the outage")  # fmt: skip
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (default 16)")
    parser.add_argument("--devices", type=int, default=40, help="devices the pushes are spread over (default 40)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the timings and devices")
    parser.add_argument("--min-load", type=float, default=0.3, help="shortest load phase in seconds (default 0.3)")
    parser.add_argument("--max-load", type=float, default=2.0, help="longest load phase in seconds (default 2)")
    parser.add_argument("--redeliver", type=int, default=5,
                        help="deliver a push of unknown outcome again, at most this often (default 5)")  # fmt: skip
    parser.add_argument("--redeliver-at", choices=("ready", "restart"), default="ready",
                        help="deliver again once /api/ready answers 200 after the restart (default), or as soon as"
                        " the service answers at all (inside the window the README leaves to duplicates)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON result (default ops/results)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (kept anyway on failure)")
    args = parser.parse_args(argv)
    if args.also_kill_service and not args.db_outage:
        parser.error("--also-kill-service needs --db-outage")
    if args.cycles < 0 or args.clients < 1 or args.devices < 1 or not 0 < args.min_load <= args.max_load:
        parser.error("--cycles >= 0, --clients >= 1, --devices >= 1 and 0 < --min-load <= --max-load")
    if args.db_outage and not available():
        parser.error("--db-outage needs mariadbd and mariadb-install-db")
    mode = SQLITE if args.sqlite else OUTAGE if args.db_outage else MARIADB
    mode += "+service" if args.also_kill_service else ""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    return Config(mode, args.cycles, args.clients, args.devices, seed, args.min_load, args.max_load,
                  args.redeliver, args.redeliver_at, args.also_kill_service, args.out, args.keep)  # fmt: skip


@contextmanager
def database_for(config: Config, workdir: Path) -> Iterator[tuple[str, PrivateMariaDB | None]]:
    if config.mode == SQLITE:
        yield "sqlite:///tlink.db", None
    elif config.mode == MARIADB:
        with mysql_database(os.environ.get("TEST_MYSQL_URL", DEFAULT_MYSQL_SERVER)) as url:
            yield url, None
    else:
        mariadb = PrivateMariaDB(workdir / "mariadb")
        mariadb.start()
        try:
            yield mariadb.url, mariadb
        finally:
            mariadb.kill()


def describe(config: Config) -> str:
    words = ["python -m ops.crash_cycles", f"--cycles {config.cycles}"]
    words += {SQLITE: ["--sqlite"], MARIADB: []}.get(config.mode, ["--db-outage"])
    words += ["--also-kill-service"] if config.also_kill_service else []
    words += [f"--clients {config.clients}", f"--devices {config.devices}", f"--seed {config.seed}"]
    words += [f"--redeliver-at {config.redeliver_at}"] if config.redeliver_at != "ready" else []
    return " ".join(words)


def execute(config: Config, workdir: Path) -> dict[str, Any]:
    """The whole run; the result document."""
    started = time.monotonic()
    result: dict[str, Any] = {"problems": [], "load_average_at_start": os.getloadavg()}
    problems: list[str] = result["problems"]
    with database_for(config, workdir) as (database_url, mariadb):
        service = Service(workdir, database_url, free_port())
        run = Run(config, service, mariadb)
        try:
            asyncio.run(run.run())
            load_seconds = time.monotonic() - started
            ready = asyncio.run(run.wait_caught_up())
            if ready.get("status") != "ready":
                problems.append(f"the read models did not catch up: {ready}")
        except (ServiceDown, RuntimeError) as exc:  # RuntimeError: the private mariadbd did not start
            problems.append(f"aborted: {exc}")
            load_seconds = time.monotonic() - started
            ready = {}
        finally:
            exit_status = service.stop()
        if exit_status != 0:
            problems.append(f"clean stop failed: exit status {exit_status}")
        root = workdir / "logs"
        stored = read_logs(root) if root.is_dir() else Stored()
        try:
            projected = read_database(database_url, workdir)
        except (pymysql.err.Error, sqlite3.Error) as exc:
            problems.append(f"the database could not be read: {exc}")
            projected = Projected(Counter(), {})
        checks = check(run.ledger, stored, projected)
        torn = torn_report(service.log_file, root, stored)
        verify_status, verify_output = service.verify()
        if checks["lines_not_in_events"] and exit_status is not None:
            result["after_restart"] = second_look(service, run, stored, database_url)
    ledger, cycles = run.ledger, run.cycles
    if checks["lost_pushes"] or checks["lost"]:
        problems.append(f"lost: {checks['lost']}")
    if checks["duplicated_total"]:
        problems.append(f"duplicated: {checks['duplicated']}")
    if checks["lines_not_in_events"] or checks["events_not_in_files"] or checks["unreadable_lines"]:
        problems.append("the files and events disagree (lines not in events, events not in files, unreadable lines)")
    if torn.unreported:
        problems.append(f"torn bytes not reported by the service: {torn.unreported}")
    if not checks["acknowledged"]:
        problems.append("no push was acknowledged: nothing was tested")
    if ledger.bad_answers:
        problems.append(f"unexpected answers: {ledger.bad_answers[:3]}")
    if verify_status != 0:
        problems.append(f"tlink-push verify exit {verify_status}")
    downs = [c.down_seconds for c in cycles] or [0.0]
    logged = service_log_summary(service.log_file)
    result.update({
        "benchmark": "crash_cycles",
        "mode": config.mode,
        "command": describe(config),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.__dict__.items() if k != "out"},
        "cycles_done": len(cycles),
        "service_starts": service.starts,
        "service_kills": service.kills,
        "database_kills": len(cycles) if mariadb is not None else 0,
        "pushes_created": len(ledger.pushes),
        "http_answers": {str(k): v for k, v in sorted(ledger.answers.items())},
        "acknowledged_answers": sum(len(p.acked) for p in ledger.pushes),
        "duplicate_answers": sum(p.duplicate_answers for p in ledger.pushes),
        "unprojected_answers": sum(p.unprojected_answers for p in ledger.pushes),
        "unknown_outcomes": ledger.unknown,
        "unknown_by_error": dict(ledger.errors.most_common()),
        "redeliveries": ledger.redeliveries,
        "refused_connections": ledger.refused,
        **checks,
        "torn_tails_repaired": torn.repaired,
        "torn_bytes_reported": torn.reported_bytes,
        "torn_files": torn.files,
        "torn_unreported": torn.unreported,
        "verify_exit": verify_status,
        "verify_output": verify_output.replace(str(workdir), "<workdir>")[-2000:],
        "ready_at_end": ready,
        "service_log": {k.replace(str(workdir), "<workdir>"): v for k, v in logged.items()},
        "down_seconds": {"min": min(downs), "median": statistics.median(downs), "max": max(downs)},
        "acknowledged_per_cycle_median": statistics.median([c.acknowledged for c in cycles] or [0]),
        "load_seconds": round(load_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
        "load_average_at_end": os.getloadavg(),
        "ok": not problems,
    })  # fmt: skip
    return result


def second_look(service: Service, run: Run, stored: Stored, database_url: str) -> dict[str, Any]:
    """Lines missing from `events` at the end: does a restart (no load) apply them, or are they gone?"""
    service.start()

    async def up() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            await service.wait_up(session)
        return await run.wait_caught_up()

    try:
        ready = asyncio.run(up())
    except ServiceDown as exc:
        return {"error": str(exc)[:500]}
    finally:
        service.stop()
    projected = read_database(database_url, service.workdir)
    again = check(run.ledger, stored, projected)
    return {
        "ready": ready.get("status"),
        "lines_not_in_events": again["lines_not_in_events"],
        "lost_pushes": again["lost_pushes"],
        "duplicated_total": again["duplicated_total"],
    }


def save(result: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"crash_cycles-{result['mode']}-{stamp}.json"
    document = {"at": stamp, "machine": machine_facts(), "code": code_version(), **result}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def summary_table(result: dict[str, Any]) -> str:
    verify_text = "ok" if result["verify_exit"] == 0 else f"FAILED ({result['verify_exit']})"
    headers = ["mode", "cycles", "acknowledged", "unknown outcomes", "lost", "duplicated", "torn tails repaired",
               "verify", "seconds"]  # fmt: skip
    row = [result["mode"], result["cycles_done"], result["acknowledged"], result["unknown_outcomes"],
           result["lost_pushes"], result["duplicated_total"], result["torn_tails_repaired"], verify_text,
           result["seconds"]]  # fmt: skip
    return table(headers, [row])


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"crash_cycles-{config.mode}-"))
    print(f"{describe(config)}: working in {workdir}", flush=True)
    result = execute(config, workdir)
    path = save(result, config.out)
    print(summary_table(result))
    print(
        f"pushes created {result['pushes_created']:,}, 2xx answers {result['acknowledged_answers']:,}"
        f" ({result['duplicate_answers']:,} duplicate), redeliveries {result['redeliveries']:,},"
        f" unknown never answered {result['unknown_unresolved']:,} (stored: {result['unknown_unresolved_stored']:,}),"
        f" log lines {result['log_lines']:,}, events {result['events_rows']:,},"
        f" readings {result['reading_rows']:,}/{result['expected_reading_rows']:,}"
    )
    print(f"verify: {result['verify_output'].splitlines()[-1] if result['verify_output'] else ''}")
    if result["lost_pushes"]:
        print(f"lost: {result['lost_from_files']:,} acknowledged event ids missing from the files; {result['lost']}")
    if "after_restart" in result:
        print(f"after one more restart with no load: {result['after_restart']}")
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")
    print(f"results: {path}")
    if result["ok"] and not config.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"working folder kept: {workdir}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
