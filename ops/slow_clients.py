"""Slow-client attack on a real `tlink-push serve`: memory and connections, before and after.

    python -m ops.slow_clients [--clients 100] [--body-kb 960] [--stall 15]

Starts the service (USE_HTTPS=false, SQLite, with WEBHOOK_TOKEN and PUSH_WEBHOOK_SECRET
set) in a temporary directory, opens `--clients` connections that each announce and
send `--body-kb` KB of a push body without a token, then stop sending (the body is a
byte short); `--with-credentials` sends the right token, as a client that has it would.
Prints the server's resident memory before, while the clients stall, and
how many of the connections the server answered or closed by the end of the stall.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ops.bench_common import free_port

TLINK_PUSH = Path(sys.executable).with_name("tlink-push")


def rss_mib(pid: int) -> float:
    """The resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("serve exited")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


TOKEN = "slow-clients-token"


async def slow_client(port: int, body_bytes: int, stall: float, credentials: bool) -> str:
    """Send a head and all but the last byte of the body, then wait; what did the server do?"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    target = f"/api/webhooks/tlink?token={TOKEN}" if credentials else "/api/webhooks/tlink"
    signature = f"X-TLink-Signature: sha256={'0' * 64}\r\n" if credentials else ""
    head = (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{signature}"
        f"Content-Length: {body_bytes + 1}\r\n\r\n"
    ).encode()
    try:
        writer.write(head)
        chunk = b" " * 65536
        sent = 0
        while sent < body_bytes:
            piece = chunk[: min(len(chunk), body_bytes - sent)]
            writer.write(piece)
            sent += len(piece)
            await asyncio.wait_for(writer.drain(), stall)
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), stall)
    except TimeoutError:
        return "no answer, still open"
    except (ConnectionError, asyncio.IncompleteReadError):
        return "closed without an answer"
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    try:  # the client keeps stalling: does the server close the connection?
        while await asyncio.wait_for(reader.read(65536), stall):
            pass
        return f"{status}, then closed by the server"
    except TimeoutError:
        return f"{status}, then left open"
    except ConnectionError:
        return f"{status}, then closed by the server"
    finally:
        writer.close()


async def attack(port: int, pid: int, clients: int, body_bytes: int, stall: float, credentials: bool) -> None:
    print(f"RSS before: {rss_mib(pid):.0f} MiB")
    tasks = [asyncio.create_task(slow_client(port, body_bytes, stall, credentials)) for _ in range(clients)]
    peak = 0.0
    started = time.monotonic()
    while not all(t.done() for t in tasks):
        peak = max(peak, rss_mib(pid))
        await asyncio.sleep(0.02)
    results = [t.result() for t in tasks]
    print(f"RSS peak while the clients sent and waited: {peak:.0f} MiB; once they are done: {rss_mib(pid):.0f} MiB")
    summary: dict[str, int] = {}
    for r in results:
        summary[r] = summary.get(r, 0) + 1
    print(f"after {time.monotonic() - started:.1f} s: {summary}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--body-kb", type=int, default=960)
    parser.add_argument("--stall", type=float, default=15.0, help="seconds each client waits for an answer")
    parser.add_argument(
        "--with-credentials", action="store_true", help="send the right ?token= and a (wrong) signature header"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        env = {
            **os.environ, "PORT": str(port), "HOST": "127.0.0.1", "USE_HTTPS": "false",
            "SYNC_LOG_DIR": str(work / "logs"), "DATABASE_URL": f"sqlite:///{work}/tlink.db",
            "TLINK_SYNC_ENABLED": "false", "WEBHOOK_TOKEN": TOKEN,
            "PUSH_WEBHOOK_SECRET": "slow-clients-secret", "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        with open(work / "serve.log", "wb") as log:
            proc = subprocess.Popen([str(TLINK_PUSH), "serve"], cwd=work, env=env, stdout=log, stderr=log)
        try:
            asyncio.run(wait_listening(port, proc))
            time.sleep(1.0)  # let start-up settle
            asyncio.run(attack(port, proc.pid, args.clients, args.body_kb * 1024, args.stall, args.with_credentials))
        finally:
            proc.terminate()
            proc.wait(30)
        errors = [line for line in (work / "serve.log").read_text().splitlines() if "ERROR" in line]
        print(f"ERROR lines in the service log: {len(errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
