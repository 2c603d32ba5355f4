"""The real `tlink-push serve` process: HTTPS by default with a generated certificate, reused on restart."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from ops.bench_common import free_port
from tests.conftest import fixture_bytes

SAMPLE = fixture_bytes("sample_push.json")
TLINK_PUSH = Path(sys.executable).with_name("tlink-push")
START_TIMEOUT = 15.0


class ServiceProcess:
    """`tlink-push serve` in a working directory of its own, on SQLite."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "SYNC_LOG_DIR": str(workdir / "logs"),
            "DATABASE_URL": f"sqlite:///{workdir}/tlink.db",
            "TLS_CERT_DIR": str(workdir / "certs"),
            "TLINK_SYNC_ENABLED": "false",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = workdir / "serve.stderr"

    @property
    def scheme(self) -> str:
        return "http" if self.env.get("USE_HTTPS") == "false" else "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [str(TLINK_PUSH), "serve"], cwd=self.workdir, env=self.env, stdout=stderr, stderr=stderr
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def wait_ready(self, ssl_context: ssl.SSLContext | bool = True) -> None:
        """Wait until the service answers /metrics."""
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc is not None and self.proc.poll() is None, f"serve exited:\n{self.stderr()}"
                try:
                    async with session.get(f"{self.url}/metrics", ssl=ssl_context) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientConnectionError, FileNotFoundError):
                    pass
                assert time.monotonic() < deadline, f"serve did not answer in {START_TIMEOUT} s:\n{self.stderr()}"
                await asyncio.sleep(0.05)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def service(tmp_path):
    """Make a ServiceProcess; any still running at the end is killed."""
    made: list[ServiceProcess] = []

    def make(**env: str) -> ServiceProcess:
        made.append(ServiceProcess(tmp_path, **env))
        return made[-1]

    yield make
    for proc in made:
        proc.kill()


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts only this certificate."""
    return ssl.create_default_context(cafile=str(cert))


def served_certificate(port: int) -> bytes:
    """The DER certificate the server presents."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.slow
async def test_first_start_serves_https_with_a_generated_certificate_reused_on_restart(service, tmp_path):
    cert = tmp_path / "certs" / "localhost.crt"
    first = service()
    first.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not cert.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await first.wait_ready(trusting(cert))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{first.url}/api/webhooks/tlink", data=SAMPLE, ssl=trusting(cert)) as resp:
            assert resp.status == 200
            assert (await resp.json())["duplicate"] is False
    assert served_certificate(first.port) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert first.terminate() == 0
    issued = cert.read_bytes()

    second = service()
    second.start()
    await second.wait_ready(trusting(cert))
    assert cert.read_bytes() == issued
    assert served_certificate(second.port) == ssl.PEM_cert_to_DER_cert(issued.decode())
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{second.url}/api/webhooks/tlink", data=SAMPLE, ssl=trusting(cert)) as resp:
            assert (await resp.json())["duplicate"] is True
    assert second.terminate() == 0
    assert "listening on https://" in second.stderr()


@pytest.mark.slow
async def test_a_client_that_does_not_trust_the_certificate_is_refused(service, tmp_path):
    proc = service()
    proc.start()
    await proc.wait_ready(ssl_context=False)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{proc.url}/metrics", ssl=ssl.create_default_context())
    assert proc.terminate() == 0


@pytest.mark.slow
def test_a_port_in_use_stops_the_start_up_with_one_line(service):
    proc = service(USE_HTTPS="false")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", proc.port))
        taken.listen()
        proc.start()
        assert proc.proc is not None
        assert proc.proc.wait(START_TIMEOUT) == 1
    err = proc.stderr()
    assert "cannot serve:" in err and "address already in use" in err
    assert "Traceback" not in err and "listening on" not in err
