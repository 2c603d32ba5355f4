"""Legacy import benchmark: time `tlink-push import-legacy` of a generated Flask-service database and logs.

    .venv/bin/python -m ops.bench_import_legacy [--devices 20] [--sensors 5] [--readings 100000]
        [--lines 1000] [--mysql-server URL] [--database-url URL | --sqlite]

Creates the original service's tables (tests/fixtures/legacy_schema.sql) in a fresh
MariaDB database of its own with `devices` x `sensors` sensors and `readings` reading
rows, writes `lines` old sync-log lines per device into a fresh log root, then runs
`tlink-push import-legacy` twice as a subprocess (the second run must import nothing)
and `tlink-push verify`, on a fresh MariaDB database (default) or SQLite for the new
service. Prints the wall time and events/s of each run and the rows that reached the
read models; saves the figures as JSON under ops/results/.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ops.bench_common import (
    DEFAULT_MYSQL_SERVER,
    PROJECT,
    _mysql_connect,
    bench_database,
    count_rows,
    save_results,
    table,
)
from projections.db import mysql_url, parse_database_url, split_statements

SCHEMA = PROJECT / "tests" / "fixtures" / "legacy_schema.sql"
FIRST_DEVICE = 6001
USER_UUID = "5f0c2b8e-1d7a-4c1e-9b7e-0a1b2c3d4e5f"
START = datetime(2024, 1, 1)
CLI = ["-c", "import sys; from service.cli.main import main; sys.exit(main(sys.argv[1:]))"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m ops.bench_import_legacy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20, help="devices in the old database (default 20)")
    parser.add_argument("--sensors", type=int, default=5, help="sensors per device (default 5)")
    parser.add_argument("--readings", type=int, default=100_000, help="sensor_readings rows (default 100000)")
    parser.add_argument("--lines", type=int, default=1000, help="old sync-log lines per device (default 1000)")
    parser.add_argument("--mysql-server", default=DEFAULT_MYSQL_SERVER, help="server for the scratch databases")
    parser.add_argument("--database-url", help="the new service's database as is (default: a fresh MariaDB one)")
    parser.add_argument("--sqlite", action="store_true", help="a fresh SQLite file as the new service's database")
    return parser.parse_args(argv)


def make_old_database(server: str, args: argparse.Namespace) -> tuple[str, str]:
    """A fresh database of the original service with generated rows: (its URL, its name)."""
    url = parse_database_url(server)
    name = f"tlink_legacy_bench_{uuid.uuid4().hex[:10]}"
    conn = _mysql_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
            cur.execute(f"USE {name}")
            for statement in split_statements(SCHEMA.read_text()):
                cur.execute(statement)
            cur.execute("INSERT INTO users (id, tlink_user_id) VALUES (%s, 385)", (USER_UUID,))
            cur.executemany("INSERT INTO devices (id, device_id, user_id) VALUES (%s, %s, %s)",
                            [(d, FIRST_DEVICE + d - 1, USER_UUID) for d in range(1, args.devices + 1)])  # fmt: skip
            sensors = args.devices * args.sensors
            cur.executemany("INSERT INTO sensors (id, device_id, sensors_id, unit) VALUES (%s, %s, %s, 'L')",
                            [(s, 1 + (s - 1) // args.sensors, 100 + s) for s in range(1, sensors + 1)])  # fmt: skip
            rows = [(1 + i % sensors, START + timedelta(minutes=i // sensors), f"{i % 997}.5")
                    for i in range(args.readings)]  # fmt: skip
            for at in range(0, len(rows), 5000):
                cur.executemany("INSERT INTO sensor_readings (sensor_id, recorded_at, value) VALUES (%s, %s, %s)",
                                rows[at : at + 5000])  # fmt: skip
        conn.commit()
    finally:
        conn.close()
    return mysql_url(url, name), name


def drop_database(server: str, name: str) -> None:
    conn = _mysql_connect(parse_database_url(server))
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        conn.close()


def write_old_logs(root: Path, args: argparse.Namespace) -> None:
    """`lines` pipe-delimited lines per device, in the original service's file names."""
    for d in range(args.devices):
        device = FIRST_DEVICE + d
        folder = root / str(device)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"device{device}-2024-03-01.log", "w") as handle:
            for i in range(args.lines):
                at = datetime(2024, 3, 1) + timedelta(minutes=i)
                fields = " | ".join(f"{100 + d * args.sensors + k}:{i}.{k}" for k in range(1, args.sensors + 1))
                handle.write(f"{at:%Y-%m-%d %H:%M:%S} | device={device} | sensors={args.sensors} | {fields}\n")


def run_cli(env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run one tlink-push command; (its wall seconds, its stdout)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, *CLI, *args], env=env, cwd=PROJECT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"tlink-push {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    old_url, old_name = make_old_database(args.mysql_server, args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "logs"
            write_old_logs(root, args)
            sqlite_dir = Path(tmp) if args.sqlite else None
            with bench_database(args.database_url, args.mysql_server, sqlite_dir) as database_url:
                env = {**os.environ, "DATABASE_URL": database_url, "SYNC_LOG_DIR": str(root), "LOG_LEVEL": "ERROR",
                       "USE_HTTPS": "false", "PYTHONPATH": str(PROJECT)}  # fmt: skip
                first, out = run_cli(env, "import-legacy", "--mysql", old_url)
                events = int(re.search(r"imported (\d+) legacy events", out).group(1))  # type: ignore[union-attr]
                second, out = run_cli(env, "import-legacy", "--mysql", old_url)
                again = int(re.search(r"imported (\d+) legacy events", out).group(1))  # type: ignore[union-attr]
                verified, out = run_cli(env, "verify")
                counts = count_rows(database_url, ["events", "sensor_readings", "sensors", "devices"])
    finally:
        drop_database(args.mysql_server, old_name)
    backend = parse_database_url(database_url).kind
    figures: dict[str, Any] = {
        "backend": backend, "devices": args.devices, "sensors": args.devices * args.sensors,
        "readingRows": args.readings, "lines": args.devices * args.lines, "events": events,
        "firstRunSeconds": round(first, 2), "eventsPerSecond": round(events / first),
        "secondRunSeconds": round(second, 2), "secondRunImported": again, "verifySeconds": round(verified, 2),
        "rows": counts, "verify": out.strip(),
    }  # fmt: skip
    print(table(["run", "events", "seconds", "events/s"], [
        ["first", events, f"{first:.1f}", f"{events / first:,.0f}"],
        ["second (nothing new)", again, f"{second:.1f}", "-"],
    ]))  # fmt: skip
    print(f"new database ({backend}): {counts}; verify: {out.strip()} ({verified:.1f} s)")
    print(f"saved {save_results('import_legacy', figures)}")
    return 0 if again == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
