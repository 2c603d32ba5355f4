"""File reads of a history request: one executor hop against aiofiles, on the event loop.

    .venv/bin/python -m ops.bench_file_reads [--requests 2000] [--concurrency 1,32] [--rounds 3]

A history request reads the tail of a device's newest file and, usually, a few blocks of
64 lines, each with one seek (projections.history). This times exactly that work on a
4 MiB log-sized file, three ways: in one hop to the default executor (what the service
does), with aiofiles (every open, seek and read is its own hop to a thread), and inline
on the event loop (blocking it, for reference). Prints requests/s and the mean time per
request for each way at each concurrency, best of `--rounds`, alternating the ways.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiofiles

TAIL_BYTES = 16 * 1024  # what the index does not cover yet: the newest block and the lines after it
BLOCK_BYTES = 12 * 1024  # 64 lines of a push with 6 sensors
BLOCKS = 3


def plan(size: int, rng: random.Random) -> list[tuple[int, int]]:
    """(offset, length) of the tail and the blocks one request reads."""
    reads = [(size - TAIL_BYTES, TAIL_BYTES)]
    reads += [(rng.randrange(0, size - TAIL_BYTES - BLOCK_BYTES), BLOCK_BYTES) for _ in range(BLOCKS)]
    return reads


def read_plain(path: Path, reads: list[tuple[int, int]]) -> int:
    total = 0
    with open(path, "rb") as handle:
        for offset, length in reads:
            handle.seek(offset)
            total += len(handle.read(length))
    return total


async def by_executor(path: Path, reads: list[tuple[int, int]]) -> int:
    return await asyncio.get_running_loop().run_in_executor(None, read_plain, path, reads)


async def by_aiofiles(path: Path, reads: list[tuple[int, int]]) -> int:
    total = 0
    async with aiofiles.open(path, "rb") as handle:
        for offset, length in reads:
            await handle.seek(offset)
            total += len(await handle.read(length))
    return total


async def inline(path: Path, reads: list[tuple[int, int]]) -> int:
    return read_plain(path, reads)


Way = Callable[[Path, list[tuple[int, int]]], Awaitable[int]]
WAYS: dict[str, Way] = {"executor": by_executor, "aiofiles": by_aiofiles, "inline (blocks the loop)": inline}


async def run(way: Way, path: Path, plans: list[list[tuple[int, int]]], concurrency: int) -> float:
    """Seconds to serve every plan with `concurrency` requests in flight."""
    queue = list(plans)

    async def worker() -> None:
        while queue:
            await way(path, queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "device1-2026-05-01.log"
        path.write_bytes(os.urandom(4 << 20))
        size = path.stat().st_size
        plans = [plan(size, rng) for _ in range(args.requests)]
        for concurrency in args.concurrency:
            best = {name: float("inf") for name in WAYS}
            for _ in range(args.rounds):
                for name, way in WAYS.items():
                    best[name] = min(best[name], await run(way, path, plans, concurrency))
            print(f"concurrency {concurrency}, {args.requests} requests, best of {args.rounds}:")
            base = best["executor"]
            for name, seconds in best.items():
                print(
                    f"  {name:26} {args.requests / seconds:9,.0f} requests/s  {seconds / args.requests * 1e6:7.0f} µs"
                    f"  ({seconds / base:.2f}× the executor's time)"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
