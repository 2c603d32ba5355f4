"""Cluster benchmark: one node without and with the bus, two nodes, the ceiling; CPU per push; failover.

    python -m ops.bench_cluster [--duration 8] [--concurrency 32] [--rounds 2] [--lease-seconds 10]
        [--devices 999] [--server-cpus 0] [--mysql-server URL] [--no-failover]

Starts, all at once and kept up for the whole run (each with a database of its own on one
private MariaDB server, so that its CPU is this benchmark's alone):

- `ceiling`: the parse-only aiohttp handler of `ops.bench_ingest --ceiling`;
- `1 node`: `tlink-push serve` without `BUS_URL`;
- `1 node + bus R1`: with one private nats-server, `BUS_REPLICAS=1`;
- `1 node + bus R3`: with a private 3-server JetStream cluster, `BUS_REPLICAS=3`;
- `2 nodes + bus R3`: two nodes on another 3-server cluster, sharing one log root and database;
- `ingest + writer R3`: one node `--role ingest` taking all the load, one `--role writer` writing
  every partition (a third 3-server cluster): what receiving and what writing a push cost apart.

The service nodes and nats-servers are pinned to `--server-cpus` (default core 0), wrk to core 1,
MariaDB floats. Each round runs the same wrk load (ops/bench_ingest.lua, unique pushes, two wrk
threads; with two nodes one thread per node, and with an odd device count every device's pushes
alternate between the nodes, as behind a round-robin balancer) against every setup in turn, in
the opposite order every other round. For each run: pushes/s and p99, both also as a ratio to the
ceiling's run of the same round, and the CPU seconds per acknowledged push of each process kind
(/proc/<pid>/stat before and after the run, once the bus's backlog is written), the input of the
capacity model. Then the failover: load on node b of the two, node a killed with `kill -9`; the
time until b owns every partition, and until a push to b for each of a's partitions is answered
`"projected": true` again. Prints everything and saves it under ops/results/. The defaults take
3 to 5 minutes.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from ops import bench_ingest
from ops.bench_common import (
    DB_PROCESSES,
    PROJECT,
    bench_database,
    cpu_seconds,
    find_pid,
    machine_busy,
    machine_cpu_seconds,
    mysql_counters,
    mysql_facts,
    pin,
    push_body,
    save_results,
    stop_process,
    table,
)
from ops.nats_cluster import NatsCluster
from ops.private_mariadb import PrivateMariaDB
from ops.service_node import ServiceNode

PARTITIONS = 16
PROBE_DEVICE = 90_000  # probe device PROBE_DEVICE + p is in partition p (90,000 is a multiple of 16)
KILL_AFTER = 3.0  # seconds of load on the survivor before the other node is killed
RATES = (10_000, 100_000)  # pushes/s of the capacity model
TWO_NODES = "2 nodes + bus R3"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m ops.bench_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per run (default 8)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of wrk (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every setup, alternating (default 2)")
    parser.add_argument("--devices", type=int, default=999, help="devices taking turns (default 999: odd, see above)")
    parser.add_argument("--lease-seconds", type=float, default=10.0, help="BUS_LEASE_SECONDS of the nodes (default 10)")
    parser.add_argument("--server-cpus", default="0", help="cores of the nodes and nats-servers (default 0)")
    parser.add_argument("--mysql-server", help="use this MySQL server (root URL) instead of a private MariaDB")
    parser.add_argument("--no-failover", action="store_true", help="skip the failover measurement")
    parser.add_argument("--seed", type=int, default=1, help="seed of the values (default 1)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the setups


@dataclass
class Setup:
    """One thing under load: its webhook URL, the hosts wrk's threads take turns on, its processes by kind."""

    name: str
    url: str
    hosts: list[str] = field(default_factory=list)
    processes: dict[str, list[int]] = field(default_factory=dict)  # kind -> pids
    nodes: list[ServiceNode] = field(default_factory=list)
    database_url: str | None = None
    nats: list[int] = field(default_factory=list)  # the nats-servers' pids, to show each one's share


def bus_state(node: ServiceNode) -> dict[str, Any]:
    """The `bus` check of the node's /api/ready (empty while it does not answer)."""
    try:
        _, body = node.get("/api/ready")
        state: dict[str, Any] = orjson.loads(body)["checks"].get("bus", {})
        return state
    except (OSError, ValueError, KeyError):
        return {}


def owned(node: ServiceNode) -> set[int]:
    return {p["partition"] for p in bus_state(node).get("partitions", [])}


def wait_for(what: str, condition: Callable[[], bool], seconds: float = 120.0) -> float:
    """Poll until `condition()` holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise SystemExit(f"not within {seconds:g} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def settled(nodes: list[ServiceNode]) -> bool:
    """Every partition written by one of the nodes, and nothing left on the bus for them."""
    parts = [p for node in nodes for p in bus_state(node).get("partitions", [])]
    return sorted(p["partition"] for p in parts) == list(range(PARTITIONS)) and all(p["lag"] == 0 for p in parts)


@contextmanager
def setups(args: argparse.Namespace, workdir: Path) -> Iterator[list[Setup]]:
    """Start every setup (see the module's text); stop them all afterwards."""
    cpus = {int(c) for c in args.server_cpus.split(",")}
    with ExitStack() as stack:
        if args.mysql_server:
            server, db_pid = args.mysql_server, find_pid(DB_PROCESSES)
        else:
            mariadb = PrivateMariaDB(workdir / "mariadb")
            mariadb.start()
            stack.callback(mariadb.kill)
            assert mariadb.process is not None
            server, db_pid = mariadb.url.rsplit("/", 1)[0] + "/mysql", mariadb.process.pid
        databases = [stack.enter_context(bench_database(None, server, None)) for _ in range(5)]
        sizes = (1, 3, 3, 3)
        clusters = [stack.enter_context(NatsCluster(workdir / f"nats{i}", size)) for i, size in enumerate(sizes)]
        nats_pids = [[s.process.pid for s in c.servers if s.process is not None] for c in clusters]
        for pids in nats_pids:
            for pid in pids:
                pin(pid, cpus)

        proc, ceiling_url = bench_ingest.start_server(argparse.Namespace(ceiling=True), workdir, None)
        stack.callback(stop_process, proc)
        bench_ingest.wait_ready(ceiling_url, proc, workdir)

        env = {"LOG_LEVEL": "WARNING", "BUS_LEASE_SECONDS": f"{args.lease_seconds:g}",
               "BUS_PARTITIONS": str(PARTITIONS), "BUS_NAME": "bench"}  # fmt: skip
        plans: list[tuple[str, str, str, str, list[str]]] = [  # name, database, BUS_URL, replicas, roles
            ("1 node", databases[0], "", "1", ["all"]),
            ("1 node + bus R1", databases[1], clusters[0].url, "1", ["all"]),
            ("1 node + bus R3", databases[2], clusters[1].url, "3", ["all"]),
            (TWO_NODES, databases[3], clusters[2].url, "3", ["all", "all"]),
            ("ingest + writer R3", databases[4], clusters[3].url, "3", ["ingest", "writer"]),
        ]
        found = [Setup("ceiling", ceiling_url, processes={"ceiling": [proc.pid]})]
        for n, ((name, database, bus, replicas, roles), nats) in enumerate(zip(plans, [[], *nats_pids], strict=True)):
            folder = workdir / f"setup{n}"
            nodes = [ServiceNode(folder, database, bus, f"n{i}", role, env={**env, "BUS_REPLICAS": replicas})
                     for i, role in enumerate(roles)]  # fmt: skip
            for node in nodes:
                node.start()
                stack.callback(node.stop)
            for node in nodes:
                node.wait_ready()
                assert node.process is not None
                pin(node.process.pid, cpus)
            processes: dict[str, list[int]] = {}
            for node in nodes:
                assert node.process is not None
                processes.setdefault("node" if node.role == "all" else f"{node.role} node", []).append(node.process.pid)
            if nats:
                processes["nats-server"] = nats
            if db_pid is not None:
                processes["mariadbd"] = [db_pid]
            hosts = [f"127.0.0.1:{n.port}" for n in nodes if n.role != "writer"]
            url = f"http://{hosts[0]}/api/webhooks/tlink"
            found.append(Setup(name, url, hosts, processes, nodes, database, nats))
        for setup in found[2:]:
            writers = [node for node in setup.nodes if node.role != "ingest"]
            took = wait_for(f"{setup.name}: every node owns its share",
                            lambda s=setup, w=writers: settled(s.nodes)  # type: ignore[misc]
                            and all(len(owned(x)) == PARTITIONS // len(w) for x in w))  # fmt: skip
            print(f"{setup.name}: partitions shared out {took:.1f} s after the nodes answered", flush=True)
        for setup in found[1:]:
            warm = bench_ingest.warm_up(setup.url, args.devices, args.seed)
            print(f"{setup.name}: warm-up (first push of {args.devices} devices) {warm['pushes_per_s']:,.0f}"
                  f" pushes/s, statuses {warm['statuses']}", flush=True)  # fmt: skip
        yield found


# ---------------------------------------------------------------- one run


def wrk_args(args: argparse.Namespace, duration: float) -> argparse.Namespace:
    """What ops.bench_ingest.run_wrk reads of its command line."""
    return argparse.Namespace(threads=2, duration=int(duration), devices=args.devices, seed=args.seed)


def process_cpu(setup: Setup) -> dict[str, float]:
    return {kind: sum(cpu_seconds(pid) for pid in pids) for kind, pids in setup.processes.items()}


def run(setup: Setup, args: argparse.Namespace, level: int) -> dict[str, Any]:
    """One wrk run against a setup; its figures and the CPU per acknowledged push of each process kind."""
    before, nats_before = process_cpu(setup), [cpu_seconds(pid) for pid in setup.nats]
    counters = mysql_counters(setup.database_url) if setup.database_url else {}
    machine_before, started = machine_cpu_seconds(), time.monotonic()
    result = bench_ingest.run_wrk(setup.url, args.concurrency, wrk_args(args, args.duration), level, None, None,
                                  hosts=setup.hosts)  # fmt: skip
    for key in ("server_cpu_pct", "db_cpu_pct", "other_cpu_pct", "server_core_busy_pct", "rss_peak_kb"):
        result.pop(key, None)  # about one process found by name; replaced by the figures below
    if setup.nodes and setup.nodes[0].env["BUS_URL"]:
        result["settle_s"] = wait_for(f"{setup.name}: backlog written", lambda: settled(setup.nodes))
    time.sleep(0.3)  # the last projections of the node without the bus
    seconds = time.monotonic() - started
    after, ok = process_cpu(setup), max(1, result["ok"])
    used = {kind: after[kind] - before[kind] for kind in before}
    result["setup"] = setup.name
    result["cpu_ms_per_push"] = {kind: 1000 * cpu / ok for kind, cpu in used.items()}
    result["nats_ms_per_push"] = sorted(
        (1000 * (cpu_seconds(pid) - cpu) / ok for pid, cpu in zip(setup.nats, nats_before, strict=True)),
        reverse=True,
    )
    wrk_cpu = result["wrk_cpu_pct"] * result["seconds"] / 100
    result["rest_cores"] = max(0.0, machine_cpu_seconds() - machine_before - sum(used.values()) - wrk_cpu) / seconds
    if counters and setup.database_url:
        now = mysql_counters(setup.database_url)
        result["db_per_push"] = {k: (now[k] - v) / ok for k, v in counters.items()}
    return result


# ---------------------------------------------------------------- failover


class Prober:
    """Pushes to one node, in turn, for a device of each given partition; notes when each answer came and
    whether it was projected."""

    def __init__(self, node: ServiceNode, partitions: set[int]) -> None:
        self.url = node.url + "/api/webhooks/tlink"
        self.partitions = sorted(partitions)
        self.answers: list[tuple[float, int, int, bool]] = []  # (monotonic, partition, status, projected)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        rng, sent, n = random.Random(7), datetime(2026, 6, 1), 0
        while not self._stop.is_set():
            partition = self.partitions[n % len(self.partitions)]
            body = orjson.dumps(push_body(PROBE_DEVICE + partition, 399, sent + timedelta(seconds=n), 4, rng))
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    status, projected = answer.status, bool(orjson.loads(answer.read()).get("projected"))
            except urllib.error.HTTPError as exc:
                status, projected = exc.code, False
            except OSError:
                status, projected = 0, False
            self.answers.append((time.monotonic(), partition, status, projected))
            n += 1
            time.sleep(0.01)


def failover(two: Setup, args: argparse.Namespace, level: int) -> dict[str, Any]:
    """Load on node b, `kill -9` of node a; when b owned every partition again, and when a push to b for each
    of a's partitions was answered projected again (seconds after the kill)."""
    a, b = two.nodes  # b: the node the survivor's load goes to
    held = owned(a)
    prober = Prober(b, held)
    duration = KILL_AFTER + 2 * args.lease_seconds + 6
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(bench_ingest.run_wrk, b.url + "/api/webhooks/tlink", args.concurrency,
                           wrk_args(args, duration), level, None, None)  # fmt: skip
        prober.start()
        time.sleep(KILL_AFTER)
        a.kill()
        killed = time.monotonic()
        owned_after = wait_for("the survivor owns every partition", lambda: len(owned(b)) == PARTITIONS)

        def projected_again() -> bool:
            return {p for t, p, _, projected in list(prober.answers) if t > killed and projected} >= held

        wait_for("pushes to the survivor are projected again", projected_again)
        result = load.result()
    prober.stop()
    firsts = {p: min(t for t, q, _, projected in prober.answers if q == p and t > killed and projected) - killed
              for p in held}  # fmt: skip
    projected_after = max(firsts.values())
    statuses: dict[int, int] = {}
    for _, _, status, _ in prober.answers:
        statuses[status] = statuses.get(status, 0) + 1
    return {"partitions_of_killed_node": sorted(held), "lease_seconds": args.lease_seconds,
            "all_owned_after_s": owned_after, "all_projected_after_s": projected_after,
            "first_projected_after_s": {str(p): t for p, t in sorted(firsts.items())},
            "probe_statuses": statuses, "load": result}  # fmt: skip


# ---------------------------------------------------------------- report


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def runs_report(runs: list[dict[str, Any]], kinds: list[str]) -> str:
    rows = []
    ceilings = {r["round"]: r for r in runs if r["setup"] == "ceiling"}
    for r in runs:
        ceiling = ceilings[r["round"]]
        cpu = r["cpu_ms_per_push"]
        rows.append([r["round"], r["setup"], r["pushes_per_s"], ratio(r["pushes_per_s"], ceiling["pushes_per_s"]),
                     r["latency_ms"]["p50"], r["latency_ms"]["p99"],
                     ratio(r["latency_ms"]["p99"], ceiling["latency_ms"]["p99"]), r["non_2xx"],
                     *(f"{cpu[k]:.3f}" if k in cpu else "-" for k in kinds), f"{sum(cpu.values()):.3f}",
                     f"{r['rest_cores']:.2f}"])  # fmt: skip
    return table(["round", "setup", "pushes/s", "x ceiling", "p50 ms", "p99 ms", "p99 x ceiling", "non-2xx",
                  *(f"{k} ms/push" for k in kinds), "total ms/push", "rest cores"], rows)  # fmt: skip


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setup: means over the rounds (pushes/s, p99, ratios to the same round's ceiling, CPU per push)."""
    ceilings = {r["round"]: r for r in runs if r["setup"] == "ceiling"}
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["setup"] for r in runs):
        mine = [r for r in runs if r["setup"] == name]
        kinds = mine[0]["cpu_ms_per_push"].keys()
        out[name] = {
            "pushes_per_s": mean([r["pushes_per_s"] for r in mine]),
            "p99_ms": mean([r["latency_ms"]["p99"] for r in mine]),
            "pushes_x_ceiling": mean([r["pushes_per_s"] / ceilings[r["round"]]["pushes_per_s"] for r in mine]),
            "p99_x_ceiling": mean([r["latency_ms"]["p99"] / ceilings[r["round"]]["latency_ms"]["p99"] for r in mine]),
            "cpu_ms_per_push": {k: mean([r["cpu_ms_per_push"][k] for r in mine]) for k in kinds},
            "nats_ms_per_push": [mean(list(v)) for v in zip(*(r["nats_ms_per_push"] for r in mine), strict=True)],
            "db_per_push": {k: mean([r["db_per_push"][k] for r in mine]) for k in mine[0].get("db_per_push", {})},
        }
    return out


def capacity(means: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Cores each component needs at RATES pushes/s: the CPU per push of the two nodes on 3 replicas, and of
    the ingest and writer roles apart (one partition's share of the writing is done by one node)."""
    two = means[TWO_NODES]
    cpu, nats = two["cpu_ms_per_push"], two["nats_ms_per_push"]
    roles = means["ingest + writer R3"]["cpu_ms_per_push"]
    parts = [("service nodes, role all (2 nodes)", cpu["node"], 1),
             ("  receiving (an ingest node)", roles["ingest node"], 1),
             ("  writing (a writer node)", roles["writer node"], 1),
             (f"  writing one partition of {PARTITIONS}", roles["writer node"], PARTITIONS),
             ("NATS, the 3 servers", cpu.get("nats-server", 0.0), 1),
             ("NATS, the busiest server (stream leader)", nats[0] if nats else 0.0, 1),
             ("MariaDB", cpu.get("mariadbd", 0.0), 1)]  # fmt: skip
    return [{"component": name, "ms_per_push": ms,
             **{f"cores_at_{rate}": ms * rate / 1000 / share for rate in RATES}}
            for name, ms, share in parts]  # fmt: skip


def print_report(results: dict[str, Any]) -> None:
    runs = results["runs"]
    kinds = list(dict.fromkeys(k for r in runs for k in r["cpu_ms_per_push"]))
    print(f"\nevery run: {results['settings']['concurrency']} connections, {results['settings']['duration']} s;"
          f" nodes and nats-servers on core(s) {results['settings']['server_cpus']}, wrk on core"
          f" {bench_ingest.LOAD_CPU}; CPU = milliseconds of CPU per acknowledged push; rest = cores busy with"
          " anything else (other people's work, this script, idle setups)")  # fmt: skip
    print(runs_report(runs, kinds))
    means = results["summary"]
    print("\nmeans over the rounds:")
    rows = [[name, m["pushes_per_s"], f"{m['pushes_x_ceiling']:.2f}", m["p99_ms"], f"{m['p99_x_ceiling']:.2f}",
             *(f"{m['cpu_ms_per_push'][k]:.3f}" if k in m["cpu_ms_per_push"] else "-" for k in kinds),
             " / ".join(f"{v:.3f}" for v in m["nats_ms_per_push"]) or "-",
             *((f"{m['db_per_push'].get(k, 0):.2f}" if m["db_per_push"] else "-") for k in ("Questions", "Com_commit"))]
            for name, m in means.items()]  # fmt: skip
    print(table(["setup", "pushes/s", "x ceiling", "p99 ms", "p99 x ceiling", *(f"{k} ms/push" for k in kinds),
                 "each nats-server ms/push", "queries/push", "commits/push"], rows))  # fmt: skip
    one, bus = means["1 node"]["cpu_ms_per_push"], means["1 node + bus R1"]["cpu_ms_per_push"]
    print(f"\nthe bus's cost per push (1 node, R1 - without): node {bus['node'] - one['node']:+.3f} ms,"
          f" nats-server {bus.get('nats-server', 0):.3f} ms, mariadbd"
          f" {bus.get('mariadbd', 0) - one.get('mariadbd', 0):+.3f} ms")  # fmt: skip
    print("\ncapacity model (CPU per push of '2 nodes + bus R3' x rate; one Python node uses at most one core):")
    rows = [[c["component"], f"{c['ms_per_push']:.3f}", *(f"{c[f'cores_at_{rate}']:.1f}" for rate in RATES)]
            for c in results["capacity"]]  # fmt: skip
    print(table(["component", "ms CPU/push", *(f"cores at {rate:,}/s" for rate in RATES)], rows))
    node = results["capacity"][0]
    print("nodes at one core each: " + ", ".join(f"{math.ceil(node[f'cores_at_{rate}'])} for {rate:,}/s"
                                                  for rate in RATES))  # fmt: skip
    fail = results.get("failover")
    if fail:
        load = fail["load"]
        print(f"\nfailover: node a (partitions {fail['partitions_of_killed_node']}) killed with kill -9 under"
              f" {results['settings']['concurrency']} connections of load on node b, lease"
              f" {fail['lease_seconds']:g} s: b owned every partition {fail['all_owned_after_s']:.1f} s after the"
              f" kill; a push to b for each of a's partitions answered projected again after"
              f" {fail['all_projected_after_s']:.1f} s (first per partition:"
              f" {min(fail['first_projected_after_s'].values()):.1f} to"
              f" {max(fail['first_projected_after_s'].values()):.1f} s); load on b over the whole run:"
              f" {load['pushes_per_s']:,.0f} pushes/s, p99 {load['latency_ms']['p99']:.1f} ms,"
              f" max {load['latency_ms']['max']:.0f} ms, non-2xx {load['non_2xx']};"
              f" probe statuses {fail['probe_statuses']}")  # fmt: skip


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {int(bench_ingest.LOAD_CPU)})  # this script's polling stays off the servers' core
    busy = machine_busy()
    print(f"before the start, other processes kept {busy:.2f} of the {os.cpu_count()} cores busy", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="tlink-bench-cluster-"))
    results: dict[str, Any] = {"settings": vars(args), "busy_before_cores": busy, "runs": []}
    try:
        with setups(args, workdir) as found:
            if found[1].database_url:
                results["database"] = mysql_facts(found[1].database_url)
            level = 0
            for number in range(args.rounds):
                for setup in found if number % 2 == 0 else found[::-1]:
                    result = run(setup, args, level)
                    result["round"] = number + 1
                    results["runs"].append(result)
                    level += 1
                    print(
                        f"round {number + 1}, {setup.name}: {result['pushes_per_s']:,.0f} pushes/s,"
                        f" p99 {result['latency_ms']['p99']:.1f} ms, non-2xx {result['non_2xx']}",
                        flush=True,
                    )
            results["summary"] = summary(results["runs"])
            results["capacity"] = capacity(results["summary"])
            if not args.no_failover:
                results["failover"] = failover(next(s for s in found if s.name == TWO_NODES), args, level)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(results)
    path = save_results("cluster", results)
    print(f"saved {path.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
