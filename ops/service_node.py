"""A `tlink-push serve` process on a port of its own, for tests and benchmarks that start, kill (`kill -9`),
pause (SIGSTOP) and resume service nodes; with `bus_url`, a cluster node (see ops/nats_cluster.py).

    node = ServiceNode(workdir, database_url, bus_url=cluster.url, node_id="a", env={"BUS_LEASE_SECONDS": "3"})
    node.start(); node.wait_ready()
    node.url   # http://127.0.0.1:PORT
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ops.bench_common import ChildProcess, free_port

TLINK_PUSH = str(Path(sys.executable).with_name("tlink-push"))


class ServiceNode(ChildProcess):
    """One service process: plain HTTP, the log root `logs` under `workdir` (shared by nodes of one workdir)."""

    def __init__(self, workdir: Path, database_url: str, bus_url: str = "", node_id: str = "", role: str = "all",
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.workdir = workdir
        self.port = free_port()
        self.node_id = node_id
        self.role = role
        self.env = {
            **os.environ, "DATABASE_URL": database_url, "PORT": str(self.port), "USE_HTTPS": "false",
            "SYNC_LOG_DIR": "logs", "LOG_LEVEL": "INFO", "TLINK_SYNC_ENABLED": "false", "BUS_URL": bus_url,
            "NODE_ID": node_id, **(env or {}),
        }  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"service-{self.node_id or self.port}.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [TLINK_PUSH, "serve", "--role", self.role], cwd=self.workdir, env=self.env, stdout=out, stderr=out
            )

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body) of a GET to the node."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, seconds: float = 60.0) -> None:
        """Wait until GET /api/health answers (the services are open)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited with {self.process.returncode}; see {self.log_file}")
            try:
                if self.get("/api/health", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node {self.node_id} did not answer within {seconds:g} s; see {self.log_file}")
