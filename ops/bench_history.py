"""History benchmark: latency of the read API over 1, 7, 30 and 90 days of log.

    .venv/bin/python -m ops.bench_history [--days 1,7,30,90] [--requests 300]
        [--work-dir DIR] [--mysql-url mysql://root@127.0.0.1:3306/mysql] [--index read-side]

Writes one device's log per size (six sensors, one push every 10 s, plus one sync with
names at the start) and 25 one-day devices of another user, straight into the files in
the exact line format (events.encode_line, hash-chained, one file per UTC day of
receipt), which is much faster than appending through the LogStore. Then it indexes the
log: by default with `tlink-push replay`'s own code (every table); with `--index
read-side` with the same projection code (`changes_of` and the SqlRecorder statements)
but only for the tables the read side uses (log_blocks, log_files, users, devices,
sensors: the same rows, about 1.5x faster). Then it starts `tlink-push serve` and
measures, one request at a time from an HTTP client, p50/p99 of
`/history?historyLimit=50` per size, of a one-day window 45 days back, and of
`/devices?historyLimit=10` for the 25-device user. SQLite by default; `--mysql-url`
names a MySQL/MariaDB server where a fresh database is made (and dropped) for a second
run. With `--work-dir` the log and the SQLite database are kept and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from eventlog.events import PUSH, SYNC, Event, new_event_id
from eventlog.files import device_days, device_ids, log_path, read_lines
from ops.bench_common import (
    PLATFORM_OFFSET,
    TLINK_PUSH,
    bench_database,
    free_port,
    save_results,
    stop_process,
    table,
    write_device_log,
)
from projections.changes import changes_of, placed_line
from projections.db import Database, connect
from projections.replay import replay_logs
from projections.schema import apply_schema
from projections.sql_recorder import Statements, log_rows, read_model_rows

INTERVAL = timedelta(seconds=10)
SENSORS = 6
HISTORY_USER, FLEET_USER = 9001, 9002
FLEET_DEVICES = 25
FLEET_BASE = 700_000
INDEX_TABLES = {"blocks", "files", "users", "device_meta", "device_push", "sensor_meta", "sensor_latest"}
TARGETS = {"history_p50": 10.0, "history_p99": 30.0, "window_p99": 30.0, "devices_p99": 100.0, "growth": 1.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m ops.bench_history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", default="1,7,30,90", help="log lengths in days, comma-separated (default 1,7,30,90)")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per figure (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests first (default 30)")
    parser.add_argument("--work-dir", type=Path, help="keep the log and SQLite database here; reused when present")
    parser.add_argument("--mysql-url", help="also measure on a fresh database on this MySQL/MariaDB server")
    parser.add_argument(
        "--index", choices=["replay", "read-side"], default="replay",
        help="replay: every table, as `tlink-push replay` (default); read-side: only the tables reads use",
    )  # fmt: skip
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the log


def history_device(days: int) -> int:
    """The device id of the log that is `days` long."""
    return 100_000 + days


def push_body(device_id: int, user_id: int, sent: datetime, n: int) -> dict[str, Any]:
    """A push like the vendor's sample, six sensors with slowly moving values."""
    clock = sent.strftime("%H:%M:%S")
    level = 1500 + (n % 720) / 4
    entries = [
        {"times": clock, "sensorsId": device_id * 10 + i, "isAlarm": "0", "sensorsTypeId": 1, "isLine": 1,
         "reVal": f"{level / 300 + i:.4f}", "value": f"{level + i * 10:.1f}"}
        for i in range(SENSORS)
    ]  # fmt: skip
    return {
        "flag": "00", "deviceUserid": user_id, "parentUserId": "217", "sensorsDates": entries,
        "time": sent.strftime("%Y-%m-%d %H:%M:%S"), "rawData": "235254552C" + f"{n:012X}" * 4 + "0D0A",
        "deviceId": device_id,
    }  # fmt: skip


def sync_body(device_id: int, user_id: int, updated: datetime) -> dict[str, Any]:
    """A device object of getDeviceSensorDatas: names and units, and the sensors' last reading."""
    stamp = updated.strftime("%Y-%m-%d %H:%M:%S")
    sensors = [
        {"id": device_id * 10 + i, "deviceId": device_id, "sensorName": f"Sensor {i + 1}", "sensorTypeId": 1,
         "unit": "mm", "value": f"{1500 + i * 10:.1f}", "isAlarms": 0, "isLine": 1, "ordernum": i, "updateDate": stamp}
        for i in range(SENSORS)
    ]  # fmt: skip
    return {"id": device_id, "deviceName": f"Tank {device_id}", "deviceNo": f"ATG{device_id:08d}", "userId": user_id,
            "isLine": 1, "lat": "13.7563", "lng": "100.5018", "sensorsList": sensors}  # fmt: skip


def events_of(device_id: int, user_id: int, end: datetime, days: int) -> Iterator[Event]:
    """One sync, then a push every 10 s for `days` days up to `end` (received 1-3 s after sending)."""
    start = end - timedelta(days=days)
    first_sent = (start + PLATFORM_OFFSET).replace(tzinfo=None)
    yield Event(new_event_id(int(start.timestamp() * 1000)), SYNC, start, device_id, user_id,
                sync_body(device_id, user_id, first_sent))  # fmt: skip
    for n in range(int(timedelta(days=days) / INTERVAL)):
        sent = start + n * INTERVAL
        received = sent + timedelta(seconds=1 + n % 3)
        body = push_body(device_id, user_id, (sent + PLATFORM_OFFSET).replace(tzinfo=None), n)
        yield Event(new_event_id(int(received.timestamp() * 1000)), PUSH, received, device_id, user_id, body)


def generate(root: Path, days: list[int], end: datetime) -> int:
    """The whole log; returns the number of lines."""
    lines = sum(write_device_log(root, events_of(history_device(d), HISTORY_USER, end, d)) for d in days)
    for i in range(FLEET_DEVICES):
        lines += write_device_log(root, events_of(FLEET_BASE + i, FLEET_USER, end, 1))
    return lines


# ---------------------------------------------------------------- the index


async def index_log(db: Database, root: Path, mode: str, chunk: int = 5000) -> int:
    """Project every line: all tables (replay) or only the read side's (changes_of, same statements)."""
    if mode == "replay":
        return (await replay_logs(db, root)).events
    await apply_schema(db)
    statements, count = Statements(db.kind), 0
    for device_id in device_ids(root):
        for day in device_days(root, device_id):
            lines = read_lines(log_path(root, device_id, day), 0, 1, day)
            while batch := [placed_line(line) for _, line in zip(range(chunk), lines, strict=False)]:
                changes = changes_of(batch)
                async with db.transaction() as cur:
                    for name, rows in log_rows(changes) + read_model_rows(changes):
                        if name in INDEX_TABLES:
                            await cur.executemany(getattr(statements, name), rows)
                count += len(batch)
    return count


async def index(database_url: str, root: Path, mode: str) -> tuple[int, float]:
    """Index the log into the database; (lines, seconds)."""
    started = time.monotonic()
    db = await connect(database_url)
    try:
        lines = await index_log(db, root, mode)
    finally:
        await db.close()
    return lines, time.monotonic() - started


# ---------------------------------------------------------------- measuring


def start_server(database_url: str, root: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`tlink-push serve` over plain HTTP on a free port."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, SYNC_LOG_DIR=str(root), USE_HTTPS="false",
               TLINK_SYNC_ENABLED="false", LOG_LEVEL="WARNING", API_KEYS="", AUTO_APPLY_SCHEMA="true")  # fmt: skip
    out = open(workdir / "serve.out", "wb")  # the server writes to it until it is stopped
    proc = subprocess.Popen([str(TLINK_PUSH), "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]) -> None:
    """Until /api/ready answers 200 (the projector has nothing to catch up)."""
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit("tlink-push serve exited; see serve.out in the work dir")
        try:
            async with session.get(base + "/api/ready") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not become ready in 120 s")


async def latency(session: aiohttp.ClientSession, url: str, requests: int, warmup: int) -> dict[str, float]:
    """p50/p99/max in ms of sequential GETs of one URL (each answer must be 200)."""
    samples = []
    for n in range(warmup + requests):
        started = time.perf_counter()
        async with session.get(url) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise SystemExit(f"{url}: {resp.status} {body[:300]!r}")
        if n >= warmup:
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50": statistics.median(samples), "p99": samples[int(len(samples) * 0.99) - 1], "max": samples[-1]}


def window_45_days_back(end: datetime) -> str:
    """startTime/endTime of a one-day window 45 days before the end of the log (platform time)."""
    stop = (end + PLATFORM_OFFSET - timedelta(days=45)).replace(tzinfo=None)
    start = stop - timedelta(days=1)
    return f"startTime={start:%Y-%m-%dT%H:%M:%S}&endTime={stop:%Y-%m-%dT%H:%M:%S}"


async def measure(base: str, proc: subprocess.Popen[bytes], days: list[int], end: datetime, args: argparse.Namespace
                  ) -> dict[str, dict[str, float]]:  # fmt: skip
    """Every figure of the benchmark."""
    results: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as session:
        await wait_ready(session, base, proc)
        for d in days:
            url = f"{base}/api/users/{HISTORY_USER}/devices/{history_device(d)}/history?historyLimit=50"
            results[f"history {d}d"] = await latency(session, url, args.requests, args.warmup)
        if max(days) > 46:
            url = f"{base}/api/users/{HISTORY_USER}/devices/{history_device(max(days))}/history?"
            results[f"window 45d back ({max(days)}d log)"] = await latency(
                session, url + window_45_days_back(end), args.requests, args.warmup
            )
        url = f"{base}/api/users/{FLEET_USER}/devices?historyLimit=10&pageSize={FLEET_DEVICES}"
        results[f"devices x{FLEET_DEVICES}"] = await latency(session, url, args.requests, args.warmup)
    return results


def verdicts(results: dict[str, dict[str, float]], days: list[int]) -> list[str]:
    """The targets, each met or not."""
    lines = []
    longest, shortest = results[f"history {max(days)}d"], results[f"history {min(days)}d"]
    growth = longest["p50"] / shortest["p50"]
    lines.append(f"history {max(days)}d p50 {longest['p50']:.2f} ms <= {TARGETS['history_p50']} ms: "
                 f"{longest['p50'] <= TARGETS['history_p50']}")  # fmt: skip
    lines.append(f"history {max(days)}d p99 {longest['p99']:.2f} ms <= {TARGETS['history_p99']} ms: "
                 f"{longest['p99'] <= TARGETS['history_p99']}")  # fmt: skip
    lines.append(f"history p50 {max(days)}d / {min(days)}d = {growth:.2f} <= {TARGETS['growth']}: "
                 f"{growth <= TARGETS['growth']}")  # fmt: skip
    for name, figures in results.items():
        if name.startswith("window"):
            lines.append(f"{name} p99 {figures['p99']:.2f} ms <= {TARGETS['window_p99']} ms: "
                         f"{figures['p99'] <= TARGETS['window_p99']}")  # fmt: skip
        if name.startswith("devices"):
            lines.append(f"{name} p99 {figures['p99']:.2f} ms <= {TARGETS['devices_p99']} ms: "
                         f"{figures['p99'] <= TARGETS['devices_p99']}")  # fmt: skip
    return lines


def run_backend(label: str, database_url: str, root: Path, workdir: Path, days: list[int], end: datetime,
                args: argparse.Namespace, indexed: bool) -> dict[str, Any]:  # fmt: skip
    """Index (unless already done), serve, measure, print."""
    info: dict[str, Any] = {"backend": label}
    if not indexed:
        lines, seconds = asyncio.run(index(database_url, root, args.index))
        print(f"{label}: indexed {lines:,} lines in {seconds:.1f} s ({args.index})", flush=True)
        info["index"] = {"lines": lines, "seconds": seconds, "mode": args.index}
    proc, base = start_server(database_url, root, workdir)
    try:
        results = asyncio.run(measure(base, proc, days, end, args))
    finally:
        stop_process(proc)
    rows = [[name, f["p50"], f["p99"], f["max"]] for name, f in results.items()]
    print(f"\n{label}: {args.requests} sequential requests per row (after {args.warmup} warm-up), ms")
    print(table(["request", "p50", "p99", "max"], [[r[0], f"{r[1]:.2f}", f"{r[2]:.2f}", f"{r[3]:.2f}"] for r in rows]))
    checks = verdicts(results, days)
    print("\n".join(checks) + "\n")
    return {**info, "results": results, "targets": checks}


def prepare(workdir: Path, days: list[int]) -> tuple[Path, datetime, bool]:
    """The log (generated, or reused from the work dir): (root, end of log, reused)."""
    root, stamp = workdir / "logs", workdir / "log-end.txt"
    if stamp.exists() and (workdir / "log-days.txt").read_text() == ",".join(map(str, days)):
        print(f"reusing the log in {root}")
        return root, datetime.fromisoformat(stamp.read_text()), True
    shutil.rmtree(root, ignore_errors=True)
    for name in ("bench.db", "bench.db-wal", "bench.db-shm", "bench.db.indexed"):
        (workdir / name).unlink(missing_ok=True)
    end = datetime.now(UTC).replace(microsecond=0)
    started = time.monotonic()
    lines = generate(root, days, end)
    size = sum(p.stat().st_size for p in root.rglob("*.log"))
    print(f"generated {lines:,} lines ({size / 2**20:,.0f} MB) in {time.monotonic() - started:.1f} s", flush=True)
    stamp.write_text(end.isoformat())
    (workdir / "log-days.txt").write_text(",".join(map(str, days)))
    return root, end, False


def main(argv: list[str] | None = None) -> int:
    """Generate, index, serve, measure; print and save the figures."""
    args = parse_args(argv)
    days = sorted(int(d) for d in args.days.split(","))
    workdir = args.work_dir or Path(tempfile.mkdtemp(prefix="tlink-bench-history-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        root, end, reused = prepare(workdir, days)
        sqlite_url = f"sqlite:///{workdir / 'bench.db'}"
        stamp = workdir / "bench.db.indexed"
        indexed = reused and stamp.exists() and stamp.read_text() == args.index
        reports = [run_backend("sqlite", sqlite_url, root, workdir, days, end, args, indexed)]
        stamp.write_text(args.index)
        if args.mysql_url:
            with bench_database(None, args.mysql_url, None) as mysql_url:
                reports.append(run_backend("mysql", mysql_url, root, workdir, days, end, args, False))
    finally:
        if args.work_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    path = save_results("history", {"days": days, "requests": args.requests, "reports": reports})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
