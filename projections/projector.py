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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventlog.events import BadLine
from eventlog.files import device_days, log_path, read_lines
from eventlog.foreign import describe_line
from eventlog.store import Appended, LogUnavailable
from projections.changes import Changes, Placed, changes_of, placed_line
from projections.db import DatabaseUnavailable
from projections.recorder import Position, Recorder

log = logging.getLogger("tlink.projector")


def _observe(future: asyncio.Future[Any]) -> None:
    """Mark a durability future's failure as seen (its waiter handles it, or nobody needs to)."""
    if not future.cancelled():
        future.exception()


def _before_commit(durables: list[asyncio.Future[None]]) -> asyncio.Future[Any] | None:
    """What a batch's commit must wait for: its flushes still in progress (a failed one raises now).

    Flushes already done need no waiting: with none pending, the statements and the
    COMMIT go to the database in one round trip.
    """
    for durable in durables:
        if durable.done() and (error := durable.exception()) is not None:
            raise error
    pending = [d for d in durables if not d.done()]
    if not pending:
        return None
    gathered = asyncio.gather(*pending)
    gathered.add_done_callback(_observe)
    return gathered

DurableEnd = Callable[[int], tuple[str | None, int]]


@dataclass(slots=True)
class _Item:
    appended: Appended
    future: asyncio.Future[bool]


@dataclass(frozen=True, slots=True)
class DeviceStop:
    """The line a device's projection stopped at: every line before it is applied, none after."""

    device_id: int
    day: str
    line_no: int
    event_id: str | None  # None when the line is not an event at all
    reason: str

    def describe(self, root: Path) -> str:
        """One sentence naming the file, the line and the reason."""
        event = f" (event {self.event_id})" if self.event_id else ""
        return f"{log_path(root, self.device_id, self.day)} line {self.line_no}{event}: {self.reason}"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


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
        self.stopped: dict[int, DeviceStop] = {}  # devices whose next line cannot be applied
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
        if appended.event.device_id in self.stopped:
            return False
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
        return (
            self.available
            and self._positions is not None
            and device_id not in self._behind
            and device_id not in self.stopped
        )

    @property
    def queued(self) -> int:
        """Appended events waiting for the next batch."""
        return len(self._queue)

    async def catch_up(self) -> None:
        """Apply everything in the log (replay, with nothing else writing); a device whose next
        line cannot be applied stops there (see `stopped`), the others go on.

        Reading and turning batch N+1 into rows (in a thread) overlaps the database
        writing batch N: either alone would leave the other side idle.
        """
        await self._load_positions()
        assert self._positions is not None
        loop = asyncio.get_running_loop()
        cursor = dict(self._positions)  # how far reading has got; self._positions: how far is committed
        writing: asyncio.Task[None] | None = None
        while True:
            devices = sorted(self._behind)
            placed, complete, stops, changes = await loop.run_in_executor(None, self._prepare, devices, cursor)
            if writing is not None:
                await writing
            self._behind.difference_update(complete)
            if not placed:
                self._stop_all(stops)
                break
            writing = asyncio.create_task(self._commit(placed, changes, stops=stops))
        self._behind.clear()

    def _prepare(
        self, devices: list[int], cursor: dict[int, Position]
    ) -> tuple[list[Placed], list[int], list[DeviceStop], Changes | None]:
        """In a thread: the next batch of lines past `cursor` (advanced) from these devices, and its
        rows (None if they cannot be made: `_commit` then finds the line at fault)."""
        placed, complete, stops = self._read_behind(devices, cursor, self.batch_limit)
        try:
            return placed, complete, stops, changes_of(placed)
        except Exception:
            return placed, complete, stops, None

    def _read_behind(
        self, devices: list[int], cursor: dict[int, Position], budget: int
    ) -> tuple[list[Placed], list[int], list[DeviceStop]]:
        """Up to `budget` lines past `cursor` (advanced) from these devices, in their order;
        (lines, devices read up to their durable end or a line that is not an event, those lines)."""
        placed: list[Placed] = []
        complete: list[int] = []
        stops: list[DeviceStop] = []
        for device_id in devices:
            if len(placed) >= budget:
                break
            lines, reached_end, stop = self._read_from(device_id, cursor.get(device_id), budget - len(placed))
            placed.extend(lines)
            if lines:
                last = lines[-1]
                cursor[device_id] = Position(last.day, last.line_no, last.end, last.hash)
            if reached_end:
                complete.append(device_id)
            if stop is not None:
                stops.append(stop)
        return placed, complete, stops

    async def _commit(
        self,
        placed: list[Placed],
        changes: Changes | None = None,
        before_commit: Awaitable[object] | None = None,
        stops: Sequence[DeviceStop] = (),
    ) -> None:
        """Write the rows of these lines in one transaction; if they cannot be applied, device by
        device, so that only the device at fault stops (at its first line that fails)."""
        started = asyncio.get_running_loop().time()
        try:
            await self.recorder.record(changes_of(placed) if changes is None else changes, before_commit)
        except (DatabaseUnavailable, LogUnavailable):
            raise
        except Exception:
            if before_commit is not None:
                await before_commit  # nothing is applied before its line is durable
            await self._commit_devices(placed)
        else:
            self._after_commit(placed, asyncio.get_running_loop().time() - started)
        self._stop_all(stops)

    async def _commit_devices(self, placed: list[Placed]) -> None:
        groups: dict[int, list[Placed]] = {}
        for p in placed:
            groups.setdefault(p.event.device_id, []).append(p)
        for device_id, lines in groups.items():
            if device_id in self.stopped or await self._try_record(lines) is None:
                continue
            for line in lines:  # find the line at fault: apply one at a time up to it
                error = await self._try_record([line])
                if error is not None:
                    self._stop_all([DeviceStop(device_id, line.day, line.line_no, line.event.id, _reason(error))])
                    break

    async def _try_record(self, lines: list[Placed]) -> Exception | None:
        """Apply these lines (committed and advanced), or the data error that prevented it."""
        try:
            await self.recorder.record(changes_of(lines))
        except (DatabaseUnavailable, LogUnavailable):
            raise
        except Exception as exc:
            return exc
        self._after_commit(lines, 0.0)
        return None

    def _stop_all(self, stops: Iterable[DeviceStop]) -> None:
        """Stop these devices' projection, loudly; a device keeps the earliest line it stopped at."""
        for stop in stops:
            known = self.stopped.get(stop.device_id)
            if known is not None and (known.day, known.line_no) <= (stop.day, stop.line_no):
                continue
            self.stopped[stop.device_id] = stop
            self._behind.discard(stop.device_id)
            self.stats.failures += 1
            log.error(
                "projection of device %d stopped at %s; other devices go on",
                stop.device_id, stop.describe(self.root),
                extra={"device": stop.device_id, "event": stop.event_id, "day": stop.day, "line": stop.line_no},
            )  # fmt: skip

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
            if device_id in self.stopped:
                continue
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
            stops: list[DeviceStop] = []
            before_commit = _before_commit(durables)
            if before_commit is not None and any(i.appended.event.device_id in self._behind for i in items):
                # Lines of this flush are to be read back from the file: it must hold them first,
                # or the device would count as caught up without them.
                await before_commit
                before_commit = None
            if self._behind and len(placed) < self.batch_limit:  # read from the committed positions
                devices = sorted(self._behind)
                cursor = {d: pos for d in devices if (pos := self._positions.get(d)) is not None}
                lines, caught_up, stops = await asyncio.get_running_loop().run_in_executor(
                    None, self._read_behind, devices, cursor, self.batch_limit - len(placed)
                )
                placed.extend(lines)
            if placed:
                await self._commit(placed, before_commit=before_commit, stops=stops)
            elif before_commit is not None:
                await before_commit
        except BaseException:
            for item in items:
                self._behind.add(item.appended.event.device_id)
            self._release(items)
            raise
        # A device marked behind meanwhile (a push while the batch was in the database) stays behind.
        self._behind.difference_update(d for d in caught_up if self._holds_durable_end(d))
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
            if device_id in self._behind or device_id in self.stopped:
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

    def _holds_durable_end(self, device_id: int) -> bool:
        """Has everything durable of this device's log been applied?"""
        assert self._positions is not None
        day, size = self._durable_end(device_id)
        pos = self._positions.get(device_id)
        return day is None or (pos is not None and (day, size) <= (pos.day, pos.byte_count))

    def _file_size(self, device_id: int, day: str) -> int:
        try:
            return log_path(self.root, device_id, day).stat().st_size
        except OSError:
            return -1

    def _read_from(
        self, device_id: int, pos: Position | None, budget: int
    ) -> tuple[list[Placed], bool, DeviceStop | None]:
        """Lines of a device's log after `pos`, up to its durable end or the first line that is
        not one of its events; (lines, reached end or that line, why it is not)."""
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
                    return result, False, None
                try:
                    placed = placed_line(line)
                except BadLine:
                    reason = f"not a valid event line: {describe_line(line.raw)}"
                    return result, True, DeviceStop(device_id, day, line.line_no, None, reason)
                if placed.event.device_id != device_id:
                    reason = f"the event names device {placed.event.device_id}"
                    return result, True, DeviceStop(device_id, day, line.line_no, placed.event.id, reason)
                result.append(placed)
        return result, True, None

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
        """Log the database's loss (or its absence at start-up) once; its return is logged by `available`."""
        if self.available:
            log.error("database connection lost; events stay in the log until it returns: %s", exc)
        elif not getattr(self, "_outage_logged", False):
            log.error("database cannot be reached at start-up; events stay in the log until it answers: %s", exc)
        self._outage_logged = True
        self.available = False

    @property
    def available(self) -> bool:
        """Did the last attempt reach the recorder? Setting it True after a logged outage logs the return."""
        return getattr(self, "_available", False)

    @available.setter
    def available(self, value: bool) -> None:
        if value and not self.available and getattr(self, "_outage_logged", False):
            log.info("database reachable again; the read models catch up with the log")
            self._outage_logged = False
        self._available = value

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.stats.failures += 1
        log.error("projector stopped: %s", exc, exc_info=exc)
        self._release(self._queue)
        self._queue = []
