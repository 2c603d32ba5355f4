"""Helpers shared by the benchmarks: scratch databases, processes, tables and result files."""

from __future__ import annotations

import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from eventlog.events import ZERO_HASH, Event, encode_line, line_hash
from eventlog.files import log_path
from projections.db import DatabaseUrl, mysql_connect, mysql_url, parse_database_url

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "ops" / "results"
BIN = Path(sys.executable).parent
TLINK_PUSH = BIN / "tlink-push"
DEFAULT_MYSQL_SERVER = "mysql://root@127.0.0.1:3306/mysql"
DB_PROCESSES = ("mariadbd", "mysqld")  # command names of the database server, to show its CPU use
PLATFORM_OFFSET = timedelta(hours=8)  # TLINK stamps bodies in China time


def push_body(device_id: int, user_id: int, sent: datetime, sensors: int, rng: random.Random) -> dict[str, Any]:
    """A push body shaped like the vendor's (tests/fixtures/sample_push.json), `sent` in platform time."""
    stamp = sent.strftime("%Y-%m-%d %H:%M:%S")
    raws = [f"{rng.random() * 10:.4f}" for _ in range(sensors)]
    entries = [
        {"times": stamp[11:], "sensorsId": device_id * 10 + i, "isAlarm": "1" if rng.random() < 0.02 else "0",
         "sensorsTypeId": 1 + i % 3, "isLine": 1, "reVal": raw, "value": f"{rng.random() * 100:.1f}"}
        for i, raw in enumerate(raws, start=1)
    ]  # fmt: skip
    raw_data = ("#RTU," + ",".join(raws) + "\r\n").encode().hex().upper()
    return {"flag": "00", "deviceUserid": user_id, "parentUserId": "217", "sensorsDates": entries, "time": stamp,
            "rawData": raw_data, "deviceId": device_id}  # fmt: skip


def write_device_log(root: Path, events: Iterable[Event]) -> int:
    """Hash-chained daily files of one device's events (in order of receipt), line by line; returns the lines."""
    prev, count, day, out = ZERO_HASH, 0, None, None
    try:
        for event in events:
            if event.day != day:
                if out is not None:
                    out.close()
                path = log_path(root, event.device_id, event.day)
                path.parent.mkdir(parents=True, exist_ok=True)
                out, day = open(path, "wb", buffering=1 << 20), event.day
            line = encode_line(event, prev)
            out.write(line + b"\n")  # type: ignore[union-attr]
            prev, count = line_hash(line), count + 1
    finally:
        if out is not None:
            out.close()
    return count


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mysql_connect(url: DatabaseUrl, database: str | None = None) -> Any:
    return mysql_connect(url, database, autocommit=True)


@contextmanager
def _mysql_cursor(url: DatabaseUrl, database: str | None = None) -> Iterator[Any]:
    """A cursor on a fresh autocommit connection, closed afterwards."""
    conn = _mysql_connect(url, database)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


@contextmanager
def bench_database(database_url: str | None, mysql_server: str, sqlite_dir: Path | None) -> Iterator[str]:
    """The DATABASE_URL to benchmark against: given as is, a fresh SQLite file, or a fresh MariaDB database."""
    if database_url:
        yield database_url
    elif sqlite_dir is not None:
        yield f"sqlite:///{sqlite_dir / 'bench.db'}"
    else:
        server = parse_database_url(mysql_server)
        name = f"tlink_bench_{uuid.uuid4().hex[:10]}"
        admin = _mysql_connect(server)
        try:
            admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
            yield mysql_url(server, name)
        finally:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
            admin.close()


def count_rows(database_url: str, tables: Sequence[str]) -> dict[str, int]:
    """Row counts of some tables (a check that the benchmarked work really reached the database)."""
    url = parse_database_url(database_url)
    if url.kind == "sqlite":
        assert url.path is not None
        with sqlite3.connect(url.path) as conn:
            return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}
    counts = {}
    with _mysql_cursor(url, url.database) as cur:
        for table in tables:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            counts[table] = int(cur.fetchone()[0])
    return counts


def mysql_facts(database_url: str) -> dict[str, str]:
    """Server version and the durability settings that decide what a commit costs."""
    url = parse_database_url(database_url)
    if url.kind != "mysql":
        return {}
    with _mysql_cursor(url) as cur:
        cur.execute("SELECT VERSION()")
        facts = {"version": str(cur.fetchone()[0])}
        cur.execute(
            "SHOW VARIABLES WHERE Variable_name IN ('innodb_flush_log_at_trx_commit', 'sync_binlog',"
            " 'log_bin', 'innodb_buffer_pool_size', 'innodb_flush_method')"
        )
        facts.update({str(k): str(v) for k, v in cur.fetchall()})
    return facts


MYSQL_COUNTERS = ("Questions", "Com_select", "Com_insert", "Com_commit", "Innodb_os_log_fsyncs", "Innodb_data_fsyncs")


def mysql_counters(database_url: str) -> dict[str, int]:
    """Server-wide statement and fsync counters (their change over a run shows what each push costs)."""
    url = parse_database_url(database_url)
    if url.kind != "mysql":
        return {}
    names = ", ".join(f"'{n}'" for n in MYSQL_COUNTERS)
    with _mysql_cursor(url) as cur:
        cur.execute(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")
        return {str(k): int(v) for k, v in cur.fetchall()}


def machine_facts() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in kB; empty once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    """Keep every thread of a running process on these cores (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:
            continue  # a thread that has just ended


def machine_cpu_seconds(core: str = "") -> float:
    """CPU seconds all cores (or one core) have been busy since boot (everything but idle and iowait)."""
    name = f"cpu{core}"
    for line in Path("/proc/stat").read_text().splitlines():
        if line.split(maxsplit=1)[0] == name:
            fields = [int(v) for v in line.split()[1:]]
            return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def machine_busy(seconds: float = 1.0) -> float:
    """Cores' worth of CPU in use over a short sample: other work on the machine skews the figures."""
    before = machine_cpu_seconds()
    time.sleep(seconds)
    return (machine_cpu_seconds() - before) / seconds


def find_pid(names: Sequence[str]) -> int | None:
    """The pid of a local process by its command name (the database server, to show its CPU use)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    return int(entry.name)
            except OSError:
                continue
    return None


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ChildProcess:
    """A server process a test or benchmark started and may signal, kill (`kill -9`), pause (SIGSTOP), resume and
    stop; `process` is None until it starts."""

    process: subprocess.Popen[bytes] | None = None

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and wait for the process to go."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown, of a paused process too), SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def code_version() -> dict[str, Any]:
    """The commit measured, and whether tracked files differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                                capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head.stdout.strip(), "modified": status.stdout.split()[1::2]}


def save_results(name: str, data: dict[str, Any]) -> Path:
    """Write the figures as JSON under ops/results/ (gitignored); returns the file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    data = {"benchmark": name, "at": stamp, "machine": machine_facts(), "code": code_version(), **data}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
