"""Ingest benchmark: unique realistic pushes against a running service, driven by wrk.

    .venv/bin/python -m ops.bench_ingest [--duration 10] [--levels 1,8,32,128,512]
        [--database-url URL | --sqlite] [--url URL --pid PID] [--ceiling]
        [--profile /tmp/profile.txt --profile-level 32 [--profile-gil]]
        [--history PAIRS] [--stream-clients N [--stream-pairs PAIRS]]

Starts `tlink-push serve` pinned to core 0 (`taskset -c 0`) on a fresh MariaDB database
(created and dropped here), sends one push per device (a device's first push creates its
folder and file), then runs wrk pinned to core 1 at each concurrency for
`--duration` seconds with ops/bench_ingest.lua, which makes every body unique (1,000
devices with 4 to 8 sensors, body `time` advancing). Prints pushes/s, readings/s, latency
percentiles, non-2xx answers, the server's RSS and CPU use per level, and saves them as JSON under
ops/results/. `--ceiling` runs the same load against a trivial aiohttp handler that only
parses the body, to show what the machine and aiohttp allow. `--history` and
`--stream-clients` run each level alternately without and with readers beside the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ops.bench_common import (
    DB_PROCESSES,
    DEFAULT_MYSQL_SERVER,
    PROJECT,
    TLINK_PUSH,
    bench_database,
    count_rows,
    cpu_seconds,
    find_pid,
    free_port,
    machine_busy,
    machine_cpu_seconds,
    mysql_counters,
    mysql_facts,
    proc_memory,
    push_body,
    save_results,
    stop_process,
    table,
)

LUA = PROJECT / "ops" / "bench_ingest.lua"
FIRST_DEVICE = 100_000
READY_DEVICE = FIRST_DEVICE - 1
BASE_TIME = 1_767_225_600  # 2026-01-01 00:00:00 UTC; each level starts 30 days later
LEVEL_SPACING = 30 * 86_400
SERVER_CPU = "0"
LOAD_CPU = "1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m ops.bench_ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per concurrency level (default 10)")
    parser.add_argument("--levels", default="1,8,32,128,512", help="concurrencies (default 1,8,32,128,512)")
    parser.add_argument("--devices", type=int, default=1000, help="distinct devices taking turns (default 1000)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: wrk has one core)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the one push per device before the levels")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30), help="seed of the values (default: new)")
    parser.add_argument("--url", help="benchmark this running webhook URL instead of starting a server")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS and --profile")
    parser.add_argument("--database-url", help="DATABASE_URL for the started server (used as is, not dropped)")
    parser.add_argument("--mysql-server", default=DEFAULT_MYSQL_SERVER, help="where the fresh bench database goes")
    parser.add_argument("--sqlite", action="store_true", help="use embedded SQLite instead of MariaDB")
    parser.add_argument("--ceiling", action="store_true", help="benchmark a trivial parse-and-200 aiohttp handler")
    parser.add_argument("--profile", type=Path, help="after the levels, one more run under py-spy, raw output here")
    parser.add_argument("--profile-level", type=int, default=32, help="concurrency of the profiled run (default 32)")
    parser.add_argument("--profile-gil", action="store_true", help="sample only the thread holding the GIL (CPU)")
    parser.add_argument("--keep", action="store_true", help="keep the server's temporary directory (logs, SQLite)")
    parser.add_argument(
        "--history", type=int, default=0, metavar="PAIRS",
        help="run each level PAIRS times alone and with one history request always in flight, alternating",
    )  # fmt: skip
    parser.add_argument(
        "--stream-clients", type=int, default=0, metavar="N",
        help="N live stream clients (GET /api/users/<user>/stream, spread over the benchmark's users) reading"
        " and discarding; each level runs alternately without and with them (see --stream-pairs)",
    )  # fmt: skip
    parser.add_argument(
        "--stream-pairs", type=int, default=2, metavar="PAIRS",
        help="with --stream-clients: runs without and with the clients per level (default 2)",
    )  # fmt: skip
    parser.add_argument("--serve-ceiling", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the ceiling server


def serve_ceiling(port: int) -> None:
    """A handler that reads and parses the body and answers 200: the best aiohttp can do here."""
    import orjson
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        answer = {"status": "ok", "storedReadings": len(body.get("sensorsDates", ()))}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/webhooks/tlink", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------- server process


Server = tuple[subprocess.Popen[bytes], str]


def start_server(args: argparse.Namespace, workdir: Path, database_url: str | None) -> Server:
    """Start the service (or the ceiling handler) on core 0; returns the process and its webhook URL."""
    port = free_port()
    if args.ceiling:
        command = [sys.executable, "-m", "ops.bench_ingest", "--serve-ceiling", str(port)]
        cwd, env = PROJECT, dict(os.environ)
    else:
        command = [str(TLINK_PUSH), "serve", "--host", "127.0.0.1", "--port", str(port)]
        cwd = workdir
        env = dict(os.environ, USE_HTTPS="false", SYNC_LOG_DIR=str(workdir / "logs"), LOG_LEVEL="WARNING")
        env["DATABASE_URL"] = database_url or ""
    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *command], cwd=cwd, env=env, stdout=log, stderr=log)
    return proc, f"http://127.0.0.1:{port}/api/webhooks/tlink"


def ready_body() -> bytes:
    """A valid push for a device outside the benchmark's range."""
    body = {
        "flag": "00", "deviceUserid": 385, "parentUserId": "217", "deviceId": READY_DEVICE,
        "sensorsDates": [{"times": "00:00:00", "sensorsId": READY_DEVICE * 10 + 1, "isAlarm": "0",
                          "sensorsTypeId": 1, "isLine": 1, "reVal": "1.0000", "value": "1.0"}],
        "time": "2025-12-31 00:00:00", "rawData": "", }  # fmt: skip
    return json.dumps(body).encode()


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, workdir: Path | None, timeout: float = 60.0) -> float:
    """Poll the webhook with one valid push until it answers 2xx; returns the seconds it took."""
    started = time.monotonic()
    request = urllib.request.Request(url, data=ready_body(), headers={"Content-Type": "application/json"})
    last = ""
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if 200 <= answer.status < 300:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.2)
    tail = (workdir / "server.log").read_text(errors="replace")[-3000:] if workdir else ""
    raise SystemExit(f"server not ready after {time.monotonic() - started:.0f} s ({last})\n{tail}")


# ---------------------------------------------------------------- warm-up


def post(url: str, body: bytes) -> int:
    """POST one body; the HTTP status, or 0 when no answer came."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def warm_up(url: str, devices: int, seed: int, concurrency: int = 32) -> dict[str, Any]:
    """One push per device before the levels: a device's first push creates its folder and file."""
    rng = random.Random(seed)
    sent = datetime.fromtimestamp(BASE_TIME - LEVEL_SPACING, UTC).replace(tzinfo=None)
    bodies = [
        json.dumps(push_body(FIRST_DEVICE + i, 300 + i % 50, sent, 4 + i % 5, rng)).encode() for i in range(devices)
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = Counter(pool.map(lambda body: post(url, body), bodies))
    seconds = time.monotonic() - started
    return {"pushes": devices, "concurrency": concurrency, "seconds": seconds, "pushes_per_s": devices / seconds,
            "statuses": dict(statuses)}  # fmt: skip


# ---------------------------------------------------------------- history reads beside the load


class HistoryReader:
    """Keeps one `/history` request in flight (a client that asks again as soon as it has its
    answer), for random devices of the benchmark, from a thread on the load generator's core."""

    def __init__(self, webhook_url: str, devices: int, seed: int) -> None:
        self._base = webhook_url.split("/api/", 1)[0]
        self._devices = devices
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._latencies: list[float] = []
        self._statuses: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._loop, name="history-reader", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop asking; the requests made, their rate, statuses and latency percentiles."""
        self._stop.set()
        self._thread.join()
        seconds = time.monotonic() - self._started
        ordered = sorted(self._latencies)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

        return {"requests": len(ordered), "per_s": len(ordered) / seconds if seconds else 0.0,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99), "statuses": dict(self._statuses)}  # fmt: skip

    def _loop(self) -> None:
        while not self._stop.is_set():
            index = self._rng.randrange(self._devices)
            user, device = 300 + index % 50, FIRST_DEVICE + index  # as ops/bench_ingest.lua sends them
            url = f"{self._base}/api/users/{user}/devices/{device}/history"
            started = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=30) as answer:
                    answer.read()
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0  # no answer at all
            self._latencies.append(time.monotonic() - started)
            self._statuses[status] += 1


# ---------------------------------------------------------------- live stream clients beside the load

BENCH_USERS = 50  # ops/bench_ingest.lua: user 300 + index % 50


class StreamClients:
    """N open live streams, client i of user 300 + i % 50 (every push reaches N / 50 of them), read and
    discarded from a thread on the load generator's core; counts the messages they got."""

    def __init__(self, webhook_url: str, clients: int) -> None:
        self._base = webhook_url.split("/api/", 1)[0]
        self._clients = clients
        self._messages = 0
        self._statuses: Counter[int] = Counter()
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="stream-clients", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        """Connect every client (each answered 200 before the level starts)."""
        self._thread.start()
        if not self._connected.wait(60):
            raise RuntimeError(f"stream clients did not connect: statuses {dict(self._statuses)}")
        self._started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        """Disconnect; the messages the clients got and their rate."""
        seconds = time.monotonic() - self._started
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        return {"clients": self._clients, "messages": self._messages,
                "per_s": self._messages / seconds if seconds else 0.0, "statuses": dict(self._statuses)}  # fmt: skip

    def _run(self) -> None:
        # On the load generator's core, like wrk: the readers are load, and must not take the server's core.
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # 0: this thread (Linux)
        asyncio.run(self._main())

    async def _main(self) -> None:
        import aiohttp

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        opened = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            responses = []
            for i in range(self._clients):
                resp = await session.get(f"{self._base}/api/users/{300 + i % BENCH_USERS}/stream")
                self._statuses[resp.status] += 1
                responses.append(resp)
                opened += resp.status == 200
            if opened == self._clients:
                self._connected.set()
            readers = [asyncio.create_task(self._read(r)) for r in responses if r.status == 200]
            await self._stop.wait()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for resp in responses:
                resp.close()

    async def _read(self, resp: Any) -> None:
        async for chunk in resp.content.iter_any():
            self._messages += chunk.count(b"\ndata: ")


# ---------------------------------------------------------------- one level


def run_wrk(
    url: str,
    concurrency: int,
    args: argparse.Namespace,
    level: int,
    pid: int | None,
    db_url: str | None,
    history: HistoryReader | None = None,
    streams: StreamClients | None = None,
    hosts: Sequence[str] = (),
) -> dict[str, Any]:
    """One wrk run at a concurrency on core 1; wrk's figures, the server's peak RSS, CPU and database work.

    `level` numbers the run: each run sends bodies of its own times, so no push repeats. `hosts`
    ("127.0.0.1:PORT", ...): wrk's threads take turns connecting to them instead of the URL's host.
    """
    threads = max(1, min(args.threads, concurrency))
    command = [
        "taskset", "-c", LOAD_CPU, "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{args.duration}s",
        "--timeout", "30s", "--latency", "-s", str(LUA), url,
        "--", str(BASE_TIME + level * LEVEL_SPACING), str(args.devices), str(FIRST_DEVICE), str(threads),
        str(args.seed + level * 1000),
    ]  # fmt: skip
    db_pid = find_pid(DB_PROCESSES)
    cpu_before = (cpu_seconds(pid) if pid else 0.0, cpu_seconds(db_pid) if db_pid else 0.0, machine_cpu_seconds(),
                  machine_cpu_seconds(SERVER_CPU))  # fmt: skip
    counters_before = mysql_counters(db_url) if db_url else {}
    if history is not None:
        history.start()
    if streams is not None:
        streams.start()
    env = dict(os.environ, BENCH_HOSTS=",".join(hosts)) if hosts else None
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    started = time.monotonic()
    peak_rss, wrk_cpu = 0, 0.0
    while wrk.poll() is None:
        if pid is not None:
            peak_rss = max(peak_rss, proc_memory(pid).get("VmRSS", 0))
        wrk_cpu = cpu_seconds(wrk.pid) or wrk_cpu
        time.sleep(0.25)
    out, err = wrk.communicate()
    seconds = time.monotonic() - started
    history_figures = history.stop() if history is not None else None
    stream_figures = streams.stop() if streams is not None else None
    used = [cpu_seconds(pid) - cpu_before[0] if pid else 0.0, cpu_seconds(db_pid) - cpu_before[1] if db_pid else 0.0]
    other = machine_cpu_seconds() - cpu_before[2] - sum(used) - wrk_cpu
    result = parse_wrk(out.decode(errors="replace"), err.decode(errors="replace"))
    result["concurrency"] = concurrency
    result["server_cpu_pct"] = 100 * used[0] / seconds if pid else None
    result["db_cpu_pct"] = 100 * used[1] / seconds if db_pid else None
    result["wrk_cpu_pct"] = 100 * wrk_cpu / seconds
    result["other_cpu_pct"] = max(0.0, 100 * other / seconds)
    result["server_core_busy_pct"] = 100 * (machine_cpu_seconds(SERVER_CPU) - cpu_before[3]) / seconds
    if counters_before and result["ok"]:
        after = mysql_counters(db_url) if db_url else {}
        result["db_per_push"] = {k: (after[k] - v) / result["ok"] for k, v in counters_before.items()}
    result["rss_peak_kb"] = peak_rss or None
    if history_figures is not None:
        result["history"] = history_figures
    if stream_figures is not None:
        result["streams"] = stream_figures
    return result


def parse_wrk(stdout: str, stderr: str) -> dict[str, Any]:
    """The BENCH_RESULT line of ops/bench_ingest.lua, with derived rates."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            raw = json.loads(line[len("BENCH_RESULT ") :])
            break
    else:
        raise SystemExit(f"wrk printed no BENCH_RESULT line:\n{stdout}\n{stderr}")
    seconds = raw["duration_us"] / 1e6
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    latency = raw["latency_us"]
    return {
        "seconds": seconds,
        "responses": raw["requests"],
        "ok": ok,
        "non_2xx": raw["requests"] - ok,
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "statuses": statuses,
        "socket_errors": {k: v for k, v in raw["errors"].items() if k != "status" and v},
        "pushes_per_s": ok / seconds,
        "readings_per_s": raw["stored_readings"] / seconds,
        "readings_per_push": raw["stored_readings"] / ok if ok else 0.0,
        "latency_ms": {k: v / 1000 for k, v in latency.items()},
    }


# ---------------------------------------------------------------- profile


def run_profiled(url: str, args: argparse.Namespace, level: int, pid: int) -> dict[str, Any]:
    """One more run at --profile-level with py-spy sampling the server (on the load generator's core)."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    spy = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
         "--duration", str(args.duration), "--output", str(args.profile), "--nonblocking",
         *(["--gil"] if args.profile_gil else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches before the load starts
    result = run_wrk(url, args.profile_level, args, level, pid, None)
    _, err = spy.communicate()
    if spy.returncode != 0:
        print(f"py-spy failed: {err.decode(errors='replace')[-2000:]}", file=sys.stderr)
    result["profile"] = str(args.profile)
    return result


def profile_summary(path: Path, top: int = 20) -> list[tuple[str, float, float]]:
    """(function, self %, total %) of the hottest functions in a py-spy raw (collapsed stack) file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[_frame(frames[-1])] += count
        for frame in {_frame(f) for f in frames}:
            inclusive[frame] += count
    if not samples:
        return []
    return [(name, 100 * n / samples, 100 * inclusive[name] / samples) for name, n in own.most_common(top)]


def _frame(frame: str) -> str:
    """`func (path/to/file.py:123)` without the line number, and with the path shortened."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        file = file.replace(str(PROJECT) + "/", "")
    return f"{name} ({file})" if file else name


# ---------------------------------------------------------------- main


def report(levels: list[dict[str, Any]]) -> str:
    """The per-level table."""
    rows = []
    for r in levels:
        lat = r["latency_ms"]
        errors = sum(r["socket_errors"].values())
        rss = f"{r['rss_peak_kb'] / 1024:.0f}" if r.get("rss_peak_kb") else "-"
        marks = (" (profiled)" if r.get("profile") else "") + (" +history" if r.get("history") else "")
        marks += f" +{r['streams']['clients']} streams" if r.get("streams") else ""
        label = f"{r['concurrency']}{marks}"
        cpu = [_pct(r[f"{k}_pct"]) for k in ("server_cpu", "server_core_busy", "db_cpu", "wrk_cpu", "other_cpu")]
        rows.append([label, r["pushes_per_s"], r["readings_per_s"], lat["p50"], lat["p90"], lat["p99"], lat["max"],
                     r["ok"], r["non_2xx"], r["5xx"], errors, rss, *cpu])  # fmt: skip
    headers = ["conc", "pushes/s", "readings/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "2xx", "non-2xx", "5xx",
               "sock err", "RSS MB", "srv CPU%", f"core{SERVER_CPU}%", "db CPU%", "wrk CPU%", "other CPU%"]  # fmt: skip
    return table(headers, rows)


def history_report(levels: list[dict[str, Any]]) -> str:
    """Per concurrency: pushes/s alone and with a history request always in flight, and the reads' figures."""
    rows = []
    for concurrency in dict.fromkeys(r["concurrency"] for r in levels if "history" in r):
        alone = [r["pushes_per_s"] for r in levels if r["concurrency"] == concurrency and "history" not in r]
        beside = [r for r in levels if r["concurrency"] == concurrency and "history" in r]
        without, with_reads = sum(alone) / len(alone), sum(r["pushes_per_s"] for r in beside) / len(beside)
        reads = [r["history"] for r in beside]
        statuses: Counter[int] = Counter()
        for h in reads:
            statuses.update(h["statuses"])
        rows.append([concurrency, without, with_reads, f"{100 * (with_reads / without - 1):+.1f} %",
                     sum(h["per_s"] for h in reads) / len(reads), max(h["p50_ms"] for h in reads),
                     max(h["p99_ms"] for h in reads), dict(statuses)])  # fmt: skip
    return table(["conc", "pushes/s alone", "pushes/s with reads", "change", "history req/s", "history p50 ms",
                  "history p99 ms", "history statuses"], rows)  # fmt: skip


def stream_report(levels: list[dict[str, Any]]) -> str:
    """Per concurrency: pushes/s without and with the stream clients, and the messages they got."""
    rows = []
    for concurrency in dict.fromkeys(r["concurrency"] for r in levels if "streams" in r):
        alone = [r for r in levels if r["concurrency"] == concurrency and "streams" not in r and not r.get("profile")]
        beside = [r for r in levels if r["concurrency"] == concurrency and "streams" in r]
        without = sum(r["pushes_per_s"] for r in alone) / len(alone)
        with_streams = sum(r["pushes_per_s"] for r in beside) / len(beside)
        statuses: Counter[int] = Counter()
        for r in beside:
            statuses.update(r["streams"]["statuses"])
        rows.append([concurrency, " / ".join(f"{r['pushes_per_s']:,.0f}" for r in alone),
                     " / ".join(f"{r['pushes_per_s']:,.0f}" for r in beside), without, with_streams,
                     f"{100 * (with_streams / without - 1):+.1f} %",
                     sum(r["streams"]["per_s"] for r in beside) / len(beside), dict(statuses)])  # fmt: skip
    return table(["conc", "runs without", "runs with", "mean without", "mean with", "change", "messages/s",
                  "stream statuses"], rows)  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def benchmark(args: argparse.Namespace, workdir: Path, database_url: str | None) -> dict[str, Any]:
    """Start (or target) the server, run every level, stop it; returns the results."""
    proc, url, pid = None, args.url, args.pid
    if url is None:
        proc, url = start_server(args, workdir, database_url)
        pid = proc.pid
    try:
        startup = wait_ready(url, proc, workdir if proc else None)
        print(f"server ready in {startup:.1f} s at {url} (pid {pid})", flush=True)
        warm = None if args.no_warmup else warm_up(url, args.devices, args.seed)
        if warm is not None:
            print(f"  warm-up: first push of {warm['pushes']} devices at concurrency {warm['concurrency']}:"
                  f" {warm['pushes_per_s']:,.0f} pushes/s, statuses {warm['statuses']}", flush=True)  # fmt: skip
        levels: list[dict[str, Any]] = []
        for concurrency in (int(c) for c in args.levels.split(",")):
            pairs = args.history or (args.stream_pairs if args.stream_clients else 0)
            # Pairs in turn without-with and with-without (ABBA): the log and the tables grow run after
            # run, and a fixed order would hand every later run to the same side.
            order = [side for n in range(pairs) for side in ((False, True) if n % 2 == 0 else (True, False))]
            for beside in order or [False]:
                history = HistoryReader(url, args.devices, args.seed + len(levels)) if beside and args.history else None
                streams = StreamClients(url, args.stream_clients) if beside and args.stream_clients else None
                result = run_wrk(url, concurrency, args, len(levels), pid, database_url, history, streams)
                levels.append(result)
                note = f", history {result['history']['per_s']:.0f} req/s" if history else ""
                if streams:
                    note += f", {args.stream_clients} streams got {result['streams']['per_s']:,.0f} messages/s"
                print(f"  concurrency {concurrency}: {result['pushes_per_s']:,.0f} pushes/s,"
                      f" p99 {result['latency_ms']['p99']:.1f} ms, non-2xx {result['non_2xx']}{note}",
                      flush=True)  # fmt: skip
        if args.profile is not None and pid is not None:
            levels.append(run_profiled(url, args, len(levels), pid))
        memory = proc_memory(pid) if pid is not None else {}
    finally:
        if proc is not None:
            stop_process(proc)
    return {"url": url, "pid": pid, "startup_s": startup, "warm_up": warm, "levels": levels,
            "server_memory_kb": memory}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print and save the figures."""
    args = parse_args(argv)
    if args.serve_ceiling:
        serve_ceiling(args.serve_ceiling)
        return 0
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # the warm-up client and polling stay off the server's core
    busy = machine_busy()
    if busy > 0.15:
        print(f"WARNING: other processes use {busy:.0%} of a core before the start: expect skewed figures")
    workdir = Path(tempfile.mkdtemp(prefix="tlink-bench-ingest-"))
    try:
        sqlite_dir = workdir if args.sqlite else None
        use_db = not args.ceiling and args.url is None
        database = bench_database(args.database_url, args.mysql_server, sqlite_dir) if use_db else nullcontext()
        with database as db_url:
            results = benchmark(args, workdir, db_url)
            if db_url:
                results["database"] = {"kind": db_url.split(":", 1)[0], **mysql_facts(db_url)}
                results["rows"] = count_rows(db_url, ["events", "sensor_readings"])
        server_log = (workdir / "server.log").read_text(errors="replace") if (workdir / "server.log").exists() else ""
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_results(args, results, server_log)
    results["server_log_tail"] = server_log[-5000:]
    results["settings"] = {k: v for k, v in vars(args).items() if k != "serve_ceiling"}
    results["busy_before_cores"] = busy
    path = save_results("ingest-ceiling" if args.ceiling else "ingest", results)
    print(f"saved {path.relative_to(PROJECT)}")
    return 0


def print_results(args: argparse.Namespace, results: dict[str, Any], server_log: str) -> None:
    """The table, the memory figures, the database check and any server log output."""
    what = "ceiling (orjson.loads + 200)" if args.ceiling else "tlink-push serve"
    print(f"\n{what}, {args.duration} s per level, server on core {SERVER_CPU}, wrk on core {LOAD_CPU}")
    print(report(results["levels"]))
    if args.history:
        print("ingest beside one /history request always in flight (means of the alternating runs):")
        print(history_report(results["levels"]))
    if args.stream_clients:
        print(f"ingest beside {args.stream_clients} live stream clients (alternating runs):")
        print(stream_report(results["levels"]))
    memory = results["server_memory_kb"]
    if memory:
        print(f"server memory at the end: VmRSS {memory.get('VmRSS', 0) / 1024:.0f} MB,"
              f" peak VmHWM {memory.get('VmHWM', 0) / 1024:.0f} MB")  # fmt: skip
    db_rows = [[r["concurrency"], *(f"{v:.2f}" for v in r["db_per_push"].values())]
               for r in results["levels"] if r.get("db_per_push")]  # fmt: skip
    if db_rows:
        names = list(next(r["db_per_push"] for r in results["levels"] if r.get("db_per_push")))
        print("database work per acknowledged push (change of SHOW GLOBAL STATUS counters / 2xx):")
        print(table(["conc", *names], db_rows))
    if "rows" in results:
        warm = (results["warm_up"] or {}).get("statuses", {}).get(200, 0)
        acked = sum(r["ok"] for r in results["levels"]) + 1 + warm
        print(f"database {results['database']}")
        print(f"rows at the end: {results['rows']}; acknowledged pushes incl. readiness and warm-up: {acked}"
              " (wrk stops with requests in flight, which the server still stores)")  # fmt: skip
    if server_log.strip():
        lines = server_log.strip().splitlines()
        print(f"server log ({len(lines)} lines at WARNING and above), last ones:")
        print("\n".join("  " + line for line in lines[-10:]))
    if args.profile is not None and args.profile.exists():
        print(f"\npy-spy profile {args.profile} (concurrency {args.profile_level}), hottest functions:")
        rows = [[name, own, total] for name, own, total in profile_summary(args.profile)]
        print(table(["function (self time)", "self %", "total %"], rows))


if __name__ == "__main__":
    sys.exit(main())
