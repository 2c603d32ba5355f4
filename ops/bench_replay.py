"""Replay benchmark: time `tlink-push replay` of a generated log into a fresh database.

    .venv/bin/python -m ops.bench_replay [--devices 1000] [--pushes 100] [--sensors 6]
        [--log-dir DIR [--regenerate]] [--database-url URL | --sqlite]

Writes a log of devices x pushes push events in the exact line format (hash-chained per
device, files per UTC day), checks it with `tlink-push verify --no-db`, then runs
`tlink-push replay` as a subprocess on a fresh MariaDB database (created and dropped
here) and prints events/s, readings/s and the replay's peak RSS; saves the figures as
JSON under ops/results/. With `--log-dir` the log is kept there and reused by later runs
unless `--regenerate` is given.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from eventlog.events import PUSH, Event, new_event_id
from eventlog.files import device_ids
from ops.bench_common import (
    DB_PROCESSES,
    DEFAULT_MYSQL_SERVER,
    PLATFORM_OFFSET,
    PROJECT,
    TLINK_PUSH,
    bench_database,
    count_rows,
    cpu_seconds,
    find_pid,
    machine_busy,
    mysql_facts,
    push_body,
    save_results,
    table,
    write_device_log,
)

FIRST_DEVICE = 200_000
START = datetime(2026, 1, 10, tzinfo=UTC)
TABLES = ["events", "sensor_readings", "sensors", "devices", "log_blocks"]


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the generated benchmark log (shared with the benchmarks that reuse it)."""
    parser.add_argument("--devices", type=int, default=1000, help="devices in the log (default 1000)")
    parser.add_argument("--pushes", type=int, default=100, help="pushes per device (default 100)")
    parser.add_argument("--sensors", type=int, default=6, help="readings per push (default 6)")
    parser.add_argument("--interval", type=int, default=900, help="seconds between a device's pushes (default 900)")
    parser.add_argument("--log-dir", type=Path, help="generate the log here and keep it; reused if it exists")
    parser.add_argument("--regenerate", action="store_true", help="with --log-dir: write the log anew")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m ops.bench_replay", description=__doc__.split("\n\n")[0])
    add_log_arguments(parser)
    parser.add_argument("--skip-verify", action="store_true", help="do not run `tlink-push verify --no-db` first")
    parser.add_argument("--database-url", help="DATABASE_URL to replay into (used as is, not dropped)")
    parser.add_argument("--mysql-server", default=DEFAULT_MYSQL_SERVER, help="where the fresh bench database goes")
    parser.add_argument("--sqlite", action="store_true", help="replay into embedded SQLite instead of MariaDB")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the log


def device_events(device_id: int, args: argparse.Namespace, rng: random.Random) -> Iterator[Event]:
    """One device's pushes, in order of receipt."""
    user_id = 300 + device_id % 50
    for n in range(args.pushes):
        received = START + timedelta(seconds=n * args.interval + device_id % args.interval)
        sent = (received + PLATFORM_OFFSET - timedelta(seconds=rng.randint(1, 5))).replace(tzinfo=None)
        body = push_body(device_id, user_id, sent, args.sensors, rng)
        yield Event(new_event_id(int(received.timestamp() * 1000)), PUSH, received, device_id, user_id, body)


def write_device(root: Path, device_id: int, args: argparse.Namespace, rng: random.Random) -> int:
    """One device's hash-chained daily files; returns the lines written."""
    write_device_log(root, device_events(device_id, args, rng))
    return int(args.pushes)


def generate(root: Path, args: argparse.Namespace) -> tuple[int, float]:
    """Write the whole log; returns (lines, seconds)."""
    started = time.monotonic()
    rng = random.Random(42)
    lines = sum(write_device(root, FIRST_DEVICE + i, args, rng) for i in range(args.devices))
    return lines, time.monotonic() - started


def count_lines(root: Path) -> tuple[int, int]:
    """(lines, bytes) of every log file under the root."""
    lines = size = 0
    for device_id in device_ids(root):
        for path in (root / str(device_id)).glob("*.log"):
            data = path.read_bytes()
            lines += data.count(b"\n")
            size += len(data)
    return lines, size


def log_bytes(root: Path) -> int:
    """Bytes of every log file under the root (from their sizes, without reading them)."""
    return sum(path.stat().st_size for device_id in device_ids(root) for path in (root / str(device_id)).glob("*.log"))


# ---------------------------------------------------------------- commands


def run_tlink(args: list[str], env: dict[str, str], workdir: Path, name: str) -> tuple[int, str, float, Any]:
    """Run a tlink-push subcommand; returns (exit status, output, wall seconds, resource usage)."""
    out_path = workdir / f"{name}.out"
    started = time.monotonic()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([str(TLINK_PUSH), *args], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    return proc.returncode, out_path.read_text(errors="replace"), seconds, usage


def tlink_env(database_url: str, root: Path) -> dict[str, str]:
    """The environment of a tlink-push run against this database and log."""
    return dict(os.environ, DATABASE_URL=database_url, SYNC_LOG_DIR=str(root), LOG_LEVEL="WARNING")


def verify_log(root: Path, workdir: Path) -> dict[str, Any]:
    """`tlink-push verify --no-db`: the generated chains must hold."""
    env = tlink_env(f"sqlite:///{workdir / 'unused.db'}", root)
    status, output, seconds, _ = run_tlink(["verify", "--no-db"], env, workdir, "verify")
    if status != 0 or "OK:" not in output:
        raise SystemExit(f"the generated log does not verify:\n{output[-3000:]}")
    print(f"verify --no-db: {output.strip().splitlines()[-1]} ({seconds:.1f} s)", flush=True)
    return {"seconds": seconds, "output": output.strip()}


def replay(database_url: str, root: Path, workdir: Path) -> dict[str, Any]:
    """Time `tlink-push replay` into the database."""
    db_pid = find_pid(DB_PROCESSES)
    db_before = cpu_seconds(db_pid) if db_pid else 0.0
    status, output, seconds, usage = run_tlink(["replay"], tlink_env(database_url, root), workdir, "replay")
    db_cpu = cpu_seconds(db_pid) - db_before if db_pid else None
    if status != 0:
        raise SystemExit(f"tlink-push replay failed ({status}):\n{output[-3000:]}")
    match = re.search(r"replayed (\d+) events in ([\d.]+) s", output)
    if match is None:
        raise SystemExit(f"unexpected replay output:\n{output[-3000:]}")
    events, inner = int(match.group(1)), float(match.group(2))
    return {"events": events, "wall_s": seconds, "replay_s": inner, "peak_rss_kb": usage.ru_maxrss,
            "cpu_s": usage.ru_utime + usage.ru_stime, "db_cpu_s": db_cpu, "output": output.strip()}  # fmt: skip


# ---------------------------------------------------------------- main


def prepare_log(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Generate the log, or reuse the one in --log-dir."""
    root = args.log_dir or workdir / "logs"
    if args.log_dir and device_ids(root) and not args.regenerate:
        lines, size = count_lines(root)
        print(f"reusing {root}: {lines:,} lines, {size / 2**20:,.0f} MB", flush=True)
        return root, {"generated": False, "lines": lines, "bytes": size}
    if args.log_dir and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    lines, seconds = generate(root, args)
    size = log_bytes(root)
    print(f"generated {lines:,} lines ({size / 2**20:,.0f} MB) in {root} in {seconds:.1f} s", flush=True)
    return root, {"generated": True, "lines": lines, "bytes": size, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    """Generate, verify, replay, and print and save the figures."""
    args = parse_args(argv)
    busy = machine_busy()
    if busy > 0.15:
        print(f"WARNING: other processes use {busy:.0%} of a core before the start: expect skewed figures")
    workdir = Path(tempfile.mkdtemp(prefix="tlink-bench-replay-"))
    try:
        root, log_info = prepare_log(args, workdir)
        verified = None if args.skip_verify else verify_log(root, workdir)
        sqlite_dir = workdir if args.sqlite else None
        with bench_database(args.database_url, args.mysql_server, sqlite_dir) as database_url:
            result = replay(database_url, root, workdir)
            rows = count_rows(database_url, TABLES)
            database = {"kind": database_url.split(":", 1)[0], **mysql_facts(database_url)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    events_per_s = result["events"] / result["replay_s"]
    print(f"\ntlink-push replay into {database.get('version', database['kind'])}")
    db_cpu = "-" if result["db_cpu_s"] is None else f"{result['db_cpu_s']:.1f}"
    print(table(
        ["events", "readings", "replay s", "events/s", "readings/s", "wall s (process)", "CPU s", "db CPU s",
         "peak RSS MB"],
        [[result["events"], rows["sensor_readings"], result["replay_s"], events_per_s,
          rows["sensor_readings"] / result["replay_s"], result["wall_s"], result["cpu_s"], db_cpu,
          f"{result['peak_rss_kb'] / 1024:.0f}"]],
    ))  # fmt: skip
    print(f"rows after replay: {rows}")
    if log_info["lines"] != result["events"] or rows["events"] != result["events"]:
        print(f"WARNING: {log_info['lines']} log lines, {result['events']} replayed, {rows['events']} event rows")
    if args.log_dir:
        print(f"log kept in {root} (reuse with --log-dir {root})")
    data = {"log": log_info, "verify": verified, "replay": result, "events_per_s": events_per_s, "rows": rows,
            "database": database, "settings": {k: str(v) for k, v in vars(args).items()},
            "busy_before_cores": busy}  # fmt: skip
    path = save_results("replay", data)
    print(f"saved {path.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
