"""Private nats-server processes with JetStream, for tests and benchmarks: one server, or a cluster of
several on loopback ports that a caller can kill (`kill -9`), pause (SIGSTOP) and resume.

    with NatsCluster(folder, size=3) as cluster:
        cluster.url            # "nats://127.0.0.1:P1,nats://127.0.0.1:P2,nats://127.0.0.1:P3" (BUS_URL)
        cluster.kill(0)        # SIGKILL the first server; the others keep the JetStream quorum
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ops.bench_common import ChildProcess, free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def available() -> bool:
    """Whether the nats-server binary is installed here."""
    return Path(NATS_SERVER).exists()


class NatsServer(ChildProcess):
    """One nats-server with JetStream on its own client port and storage folder."""

    def __init__(self, folder: Path, name: str, cluster_port: int | None = None, routes: list[int] | None = None,
                 cluster_name: str = "tlink") -> None:  # fmt: skip
        self.folder = folder
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.folder / "store"),
                "-n", self.name, "-l", str(self.folder / "server.log")]  # fmt: skip
        if self.cluster_port is not None:
            args += ["-cluster", f"nats://127.0.0.1:{self.cluster_port}", "--cluster_name", self.cluster_name]
            if self.routes:
                args += ["-routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return args

    def start(self) -> None:
        """Start the server (again, after a kill) and wait until its client port accepts connections."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited with {self.process.returncode}; see "
                                   f"{self.folder / 'server.log'}")  # fmt: skip
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} did not open port {self.port}")


class NatsCluster:
    """`size` nats-servers routed to each other (size 1: a single server without clustering)."""

    def __init__(self, folder: Path, size: int = 3, cluster_name: str = "tlink") -> None:
        ports = [free_port() for _ in range(size)] if size > 1 else [None]
        self.servers = [
            NatsServer(folder / f"n{i}", f"n{i}", port, [p for p in ports if p is not None and p != port],
                       cluster_name)
            for i, port in enumerate(ports)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated (a BUS_URL value)."""
        return ",".join(server.url for server in self.servers)

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def kill(self, index: int) -> None:
        self.servers[index].kill()

    def pause(self, index: int) -> None:
        self.servers[index].pause()

    def resume(self, index: int) -> None:
        self.servers[index].resume()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
