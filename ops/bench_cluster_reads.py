"""What a read costs on the node that does not write the device (cluster mode, shared log root).

Starts one private nats-server and two service nodes on a MariaDB database of their own, pushes
`--pushes` uploads over `--devices` devices, then times `--reads` history requests of one device
on the node that writes it and on the other one (which reads the files as they stand instead of
its own log store's chain heads). Prints the median and p99 of each.

    python -m ops.bench_cluster_reads [--mysql-url mysql://root@127.0.0.1:3306/test]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

from ops.nats_cluster import NatsCluster
from ops.service_node import ServiceNode
from projections.db import mysql_connect, mysql_url, parse_database_url

SAMPLE: dict[str, Any] = {
    "flag": "00", "deviceUserid": 385, "parentUserId": "217", "time": "2019-05-10 14:16:21", "deviceId": 0,
    "sensorsDates": [{"times": "14:16:21", "sensorsId": 1, "isAlarm": "0", "sensorsTypeId": 1, "isLine": 1,
                      "reVal": "5.0", "value": "5.0"}],
}  # fmt: skip


def upload(i: int, devices: int) -> bytes:
    body = copy.deepcopy(SAMPLE)
    entry = body["sensorsDates"][0]
    body["deviceId"] = 9000 + i % devices
    body["time"] = f"2019-05-{10 + i // 86400:02d} {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
    entry["times"], entry["value"], entry["sensorsId"] = body["time"][11:], str(i), body["deviceId"] * 10 + 1
    return orjson.dumps(body)


def post(node: ServiceNode, data: bytes) -> None:
    request = urllib.request.Request(f"{node.url}/api/webhooks/tlink", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def timed_reads(node: ServiceNode, path: str, reads: int) -> list[float]:
    took = []
    for _ in range(reads):
        started = time.perf_counter()
        status, _ = node.get(path)
        took.append(time.perf_counter() - started)
        assert status == 200
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mysql-url", default="mysql://root@127.0.0.1:3306/test")
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--reads", type=int, default=300)
    args = parser.parse_args()
    url = parse_database_url(args.mysql_url)
    name = f"tlink_bench_{uuid.uuid4().hex[:8]}"
    admin = mysql_connect(url, None, autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {name}")
    database = mysql_url(url, name)
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-reads-"))
    try:
        with NatsCluster(folder / "nats", size=1) as cluster:
            env = {"BUS_LEASE_SECONDS": "3", "LOG_LEVEL": "WARNING"}
            nodes = [ServiceNode(folder, database, cluster.url, node_id, env=env) for node_id in ("a", "b")]
            try:
                for node in nodes:
                    node.start()
                    node.wait_ready()
                time.sleep(8)  # both nodes take their share of the partitions
                for i in range(args.pushes):
                    post(nodes[i % 2], upload(i, args.devices))
                time.sleep(3)
                writer = next(n for n in nodes if 9000 % 16 in [p["partition"] for p in
                              orjson.loads(n.get("/api/ready")[1])["checks"]["bus"]["partitions"]])  # fmt: skip
                other = nodes[1] if writer is nodes[0] else nodes[0]
                path = "/api/users/385/devices/9000/history?historyLimit=100"
                assert orjson.loads(writer.get(path)[1]) == orjson.loads(other.get(path)[1])
                for label, node in (("writer of the device", writer), ("other node", other)):
                    took = sorted(timed_reads(node, path, args.reads))
                    p99 = took[int(len(took) * 0.99) - 1]
                    print(f"history of a device with {args.pushes // args.devices} pushes, from the {label}:"
                          f" median {statistics.median(took) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"
                          f" ({args.reads} requests, one at a time)")  # fmt: skip
            finally:
                for node in nodes:
                    node.stop()
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
