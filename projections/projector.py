"""The projector: applies logged events to the recorder, in log order, exactly once.

One worker task does all writing. Freshly appended events arrive through `project`
and are applied straight from memory when they directly follow what the recorder has
(the common case). A device whose events could not be applied (database down, a gap
after a restart) is marked behind, and the worker reads its log from the recorded
position onward instead. Each batch and the new positions commit together, so a
crash never applies an event twice or skips one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventlog.db import DatabaseUnavailable
from eventlog.files import device_days, log_path, read_lines
from eventlog.store import Appended, LogUnavailable
from projections.changes import Changes, Placed, changes_of, placed_line
from projections.errors import ProjectionError
from projections.recorder import Position, Recorder

log = logging.getLogger("tlink.projector")


def _observe(future: asyncio.Future[Any]) -> None:
    """Mark a durability future's failure as seen (its waiter handles it, or nobody needs to)."""
    if not future.cancelled():
        future.exception()

DurableEnd = Callable[[int], tuple[str | None, int]]


@dataclass(slots=True)
class _Item:
    appended: Appended
    future: asyncio.Future[bool]


@dataclass(slots=True)
class ProjectorStats:
    """What the projector has done, for metrics and readiness."""

    applied_events: int = 0
    failures: int = 0
    last_applied_at: float | None = None


BatchObserver = Callable[[int, float], None]  # (events, seconds)


class Projector:
    """Keeps the recorder in step with the log."""

    def __init__(
        self,
        recorder: Recorder,
        root: Path,
        durable_end: DurableEnd,
        devices: Callable[[], list[int]],
        batch_limit: int = 2000,
        retry_seconds: float = 1.0,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.recorder = recorder
        self.root = root
        self._durable_end = durable_end
        self._devices = devices
        self.batch_limit = batch_limit
        self.retry_seconds = retry_seconds
        self._on_batch = on_batch
        self._positions: dict[int, Position] | None = None
        self._behind: set[int] = set()
        self._queue: list[_Item] = []
        self._staged: dict[str, asyncio.Future[bool]] = {}  # by event id, until `project` asks
        self._durables: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.available = False  # did the last attempt reach the recorder?
        self.failed: BaseException | None = None
        self.stats = ProjectorStats()

    # ---------------------------------------------------------------- public

    async def start(self) -> None:
        """Load positions if the recorder answers (it may not: the worker retries), then start."""
        try:
            await self._load_positions()
        except DatabaseUnavailable as exc:
            self._note_unavailable(exc)
        self._task = asyncio.create_task(self._run(), name="projector")

    async def stop(self) -> None:
        """Finish the batch in hand and stop; queued events stay in the log for next time."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._release(self._queue)
        self._queue = []

    def on_staged(self, appended: list[Appended], durable: asyncio.Future[None]) -> None:
        """The log store's hook: lines about to be written, durable once `durable` resolves.

        Their batch starts now and commits after the fsync, so the two overlap.
        """
        durable.add_done_callback(_observe)
        if self.failed is not None or self._stopping or not self.available:
            return  # `project` marks them behind
        loop = asyncio.get_running_loop()
        for item in appended:
            future: asyncio.Future[bool] = loop.create_future()
            self._staged[item.event.id] = future
            self._queue.append(_Item(item, future))
        self._durables.append(durable)
        self._wakeup.set()

    async def project(self, appended: Appended) -> bool:
        """Apply a just-appended event; True once the read models reflect it, False if left behind."""
        staged = self._staged.pop(appended.event.id, None)
        if staged is not None:
            return await staged
        if self.failed is not None or self._stopping or not self.available:
            self._behind.add(appended.event.device_id)
            self._wakeup.set()
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(appended, future))
        self._wakeup.set()
        return await future

    @property
    def behind(self) -> int:
        """Devices whose log is ahead of the recorder."""
        return len(self._behind) if self._positions is not None else len(self._devices())

    def caught_up(self, device_id: int) -> bool:
        """Does the recorder hold everything of this device's log that is not in a batch in hand?"""
        return self.available and self._positions is not None and device_id not in self._behind

    @property
    def queued(self) -> int:
        """Appended events waiting for the next batch."""
        return len(self._queue)

    async def catch_up(self) -> None:
        """Apply everything in the log (replay, with nothing else writing); raises on any failure.

        Reading and turning batch N+1 into rows (in a thread) overlaps the database
        writing batch N: either alone would leave the other side idle.
        """
        await self._load_positions()
        assert self._positions is not None
        loop = asyncio.get_running_loop()
        cursor = dict(self._positions)  # how far reading has got; self._positions: how far is committed
        writing: asyncio.Task[None] | None = None
        written: list[Placed] = []
        while True:
            placed, changes = await loop.run_in_executor(None, self._prepare, cursor)
            if writing is not None:
                await writing
                self._after_commit(written, 0.0)
            if not placed:
                break
            writing = asyncio.create_task(self.recorder.record(changes))
            written = placed
        self._behind.clear()

    def _prepare(self, cursor: dict[int, Position]) -> tuple[list[Placed], Changes]:
        """The next batch of lines past `cursor` (advanced) from the devices behind, as rows."""
        placed, complete = self._read_behind(sorted(self._behind), cursor, self.batch_limit)
        self._behind.difference_update(complete)
        return placed, changes_of(placed)

    def _read_behind(
        self, devices: list[int], cursor: dict[int, Position], budget: int
    ) -> tuple[list[Placed], list[int]]:
        """Up to `budget` lines past `cursor` (advanced) from these devices, in their order;
        (lines, devices read up to their durable end)."""
        placed: list[Placed] = []
        complete: list[int] = []
        for device_id in devices:
            if len(placed) >= budget:
                break
            lines, reached_end = self._read_from(device_id, cursor.get(device_id), budget - len(placed))
            placed.extend(lines)
            if lines:
                last = lines[-1]
                cursor[device_id] = Position(last.day, last.line_no, last.end, last.hash)
            if reached_end:
                complete.append(device_id)
        return placed, complete

    def _after_commit(self, placed: list[Placed], seconds: float) -> None:
        self._advance(placed)
        self.stats.applied_events += len(placed)
        self.stats.last_applied_at = asyncio.get_running_loop().time()
        if self._on_batch is not None and placed:
            self._on_batch(len(placed), seconds)

    # ---------------------------------------------------------------- worker

    async def _run(self) -> None:
        while not self._stopping and self.failed is None:
            try:
                if self._positions is None:
                    await self._load_positions()
                items, self._queue = self._queue[: self.batch_limit], self._queue[self.batch_limit :]
                durables, self._durables = self._durables, []
                if items or self._behind:
                    await self._apply_batch(items, durables)
                    if self._queue or self._behind:
                        await asyncio.sleep(0)  # let handlers run between catch-up batches
                        continue
            except DatabaseUnavailable as exc:
                self._note_unavailable(exc)
                await self._sleep(self.retry_seconds)
                continue
            except LogUnavailable:
                continue  # those lines were never written; the batch's devices are re-read from the log
            except Exception as exc:  # a bug or bad data: stop loudly, never skip
                self._fail(exc)
                return
            self._wakeup.clear()
            if not self._queue and not self._behind and not self._stopping:
                await self._wakeup.wait()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_signal(), timeout=seconds)
        except TimeoutError:
            pass

    async def _stop_signal(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _load_positions(self) -> None:
        positions = await self.recorder.positions()
        self._positions = positions
        self.available = True
        loop = asyncio.get_running_loop()
        self._behind = await loop.run_in_executor(None, self._devices_behind, positions)
        if self._behind:
            log.info("projection catching up", extra={"devices": len(self._behind)})

    def _devices_behind(self, positions: dict[int, Position]) -> set[int]:
        behind = set()
        for device_id in self._devices():
            day, size = self._durable_end(device_id)
            pos = positions.get(device_id)
            if day is not None and (pos is None or (day, size) > (pos.day, pos.byte_count)):
                behind.add(device_id)
        return behind

    async def _apply_batch(self, items: list[_Item], durables: list[asyncio.Future[None]]) -> None:
        assert self._positions is not None
        try:
            placed = self._hot_events(items)
            caught_up: list[int] = []
            if self._behind and len(placed) < self.batch_limit:  # read from the committed positions
                devices = sorted(self._behind)
                cursor = {d: pos for d in devices if (pos := self._positions.get(d)) is not None}
                lines, caught_up = await asyncio.get_running_loop().run_in_executor(
                    None, self._read_behind, devices, cursor, self.batch_limit - len(placed)
                )
                placed.extend(lines)
            started = asyncio.get_running_loop().time()
            # Flushes already done need no waiting: with none pending, the statements and
            # the COMMIT go to the database in one round trip.
            for durable in durables:
                if durable.done() and (error := durable.exception()) is not None:
                    raise error
            pending = [d for d in durables if not d.done()]
            before_commit = asyncio.gather(*pending) if pending else None
            if before_commit is not None:
                before_commit.add_done_callback(_observe)
            if placed:
                await self.recorder.record(changes_of(placed), before_commit)
            elif before_commit is not None:
                await before_commit
        except BaseException:
            for item in items:
                self._behind.add(item.appended.event.device_id)
            self._release(items)
            raise
        self._after_commit(placed, asyncio.get_running_loop().time() - started)
        self._behind.difference_update(caught_up)
        self.available = True
        for item in items:
            a = item.appended
            pos = self._positions.get(a.event.device_id)
            done = pos is not None and (pos.day, pos.byte_count) >= (a.day, a.end)
            if not item.future.done():
                item.future.set_result(done)

    def _hot_events(self, items: list[_Item]) -> list[Placed]:
        """Events that directly follow their device's position; others mark the device behind."""
        assert self._positions is not None
        placed: list[Placed] = []
        ends: dict[int, tuple[str, int, int]] = {}
        for item in sorted(items, key=lambda i: (i.appended.event.device_id, i.appended.day, i.appended.offset)):
            a = item.appended
            device_id = a.event.device_id
            if device_id in self._behind:
                continue
            pos = self._positions.get(device_id)
            day, end, lines = ends.get(device_id) or (
                (pos.day, pos.byte_count, pos.line_count) if pos else (None, 0, 0)
            )
            if a.day == day and a.offset == end:
                line_no = lines + 1
            elif a.offset == 0 and (day is None or (a.day > day and self._file_size(device_id, day) == end)):
                line_no = 1
            else:
                self._behind.add(device_id)
                placed = [p for p in placed if p.event.device_id != device_id]
                continue
            placed.append(Placed(a.event, a.day, line_no, a.offset, a.length, a.hash))
            ends[device_id] = (a.day, a.end, line_no)
        return placed

    def _file_size(self, device_id: int, day: str) -> int:
        try:
            return log_path(self.root, device_id, day).stat().st_size
        except OSError:
            return -1

    def _read_from(self, device_id: int, pos: Position | None, budget: int) -> tuple[list[Placed], bool]:
        """Lines of a device's log after `pos`, up to its durable end; (lines, reached end)."""
        end_day, end_size = self._durable_end(device_id)
        result: list[Placed] = []
        for day in device_days(self.root, device_id):
            if pos is not None and day < pos.day:
                continue
            if end_day is not None and day > end_day:
                break
            same = pos is not None and day == pos.day
            start, line_no = (pos.byte_count, pos.line_count + 1) if same and pos else (0, 1)
            stop = end_size if day == end_day else None
            for line in read_lines(log_path(self.root, device_id, day), start, line_no, day):
                if stop is not None and line.end > stop:
                    break
                if len(result) >= budget:
                    return result, False
                placed = placed_line(line)
                if placed.event.device_id != device_id:
                    raise ProjectionError(f"{day} line {line.line_no} of device {device_id} names another device")
                result.append(placed)
        return result, True

    def _advance(self, placed: list[Placed]) -> None:
        assert self._positions is not None
        for p in placed:
            pos = self._positions.get(p.event.device_id)
            if pos is None or (p.day, p.end) > (pos.day, pos.byte_count):
                self._positions[p.event.device_id] = Position(p.day, p.line_no, p.end, p.hash)

    def _release(self, items: list[_Item]) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_result(False)
        if len(self._staged) > 10 * self.batch_limit:  # answers nobody came for (a failed append)
            for event_id in [k for k, f in self._staged.items() if f.done()]:
                del self._staged[event_id]

    def _note_unavailable(self, exc: BaseException) -> None:
        if self.available:
            log.warning("database unavailable; events stay in the log until it returns: %s", exc)
        self.available = False

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.stats.failures += 1
        log.error("projector stopped: %s", exc, exc_info=exc)
        self._release(self._queue)
        self._queue = []
