"""The projector: applies logged events to the recorder, in log order, exactly once.

One worker task does all writing, along two paths that each read top to bottom:

- the hot path (`_apply_staged`): the ingest hands each event over with `submit` as soon
  as its line has its place in the log, with what it already read from the body
  (`Staged`). Events that directly follow what the recorder has are applied from memory;
  their batch commits only once their lines are on disk, so the database's work overlaps
  the fsync.
- the catch-up path (`_catch_up_batch`): a device whose events could not be applied that
  way (database down, a gap after a restart) is marked behind, and its log is read from
  the recorded position onward.

Each batch and the new positions commit together, so a crash never applies an event
twice or skips one. `apply_log` (replay, rebuild) runs the catch-up path alone over the
whole log. A device whose next line cannot be applied stops there (`stopped`); the
others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventlog.files import LogView, log_path
from eventlog.store import Appended, LogUnavailable
from projections.changes import Changes, Placed, changes_of
from projections.db import DatabaseUnavailable
from projections.log_lines import DeviceStop, Lines, read_behind
from projections.readings import Parsed
from projections.recorder import Position, Recorder

log = logging.getLogger("tlink.projector")

BatchObserver = Callable[[int, float], None]  # (events, seconds)
AppliedObserver = Callable[[list[Placed]], None]  # the events of a commit, once the read models show them


@dataclass(frozen=True, slots=True)
class Staged:
    """An event handed to the projector once its line has its place in the log.

    `parsed`: what the ingest already read from the body (None: the projector reads it).
    `durable`: resolves once the line is on disk, or fails if it never will be (None: it
    already is); nothing of the event is committed before. Its failure needs no waiter
    (LogStore.queue marks it seen).
    """

    appended: Appended
    parsed: Parsed | None = None
    durable: asyncio.Future[Appended] | None = None


@dataclass(slots=True)
class _Item:
    staged: Staged
    answer: asyncio.Future[bool]


@dataclass(slots=True)
class ProjectorStats:
    """What the projector has done, for metrics and readiness."""

    applied_events: int = 0
    failures: int = 0
    last_applied_at: float | None = None


def _observe(future: asyncio.Future[Any]) -> None:
    """Mark a durability future's failure as seen (its waiter handles it, or nobody needs to)."""
    if not future.cancelled():
        future.exception()


def _before_commit(durables: Iterable[asyncio.Future[Appended]]) -> asyncio.Future[Any] | None:
    """What a batch's commit must wait for: its flushes still in progress (a failed one raises now).

    Flushes already done need no waiting: with none pending, the statements and the
    COMMIT go to the database in one round trip.
    """
    pending = []
    for durable in durables:
        if not durable.done():
            pending.append(durable)
        elif (error := durable.exception()) is not None:
            raise error
    if not pending:
        return None
    gathered = asyncio.gather(*pending)
    gathered.add_done_callback(_observe)
    return gathered


def _log_order(item: _Item) -> tuple[int, str, int]:
    appended = item.staged.appended
    return appended.event.device_id, appended.day, appended.offset


def _answer(item: _Item, applied: bool) -> None:
    if not item.answer.done():  # its waiter may have given up (cancelled)
        item.answer.set_result(applied)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Projector:
    """Keeps the recorder in step with the log."""

    def __init__(
        self,
        recorder: Recorder,
        root: Path,
        log_view: LogView,
        batch_limit: int = 2000,
        retry_seconds: float = 1.0,
        on_batch: BatchObserver | None = None,
        on_applied: AppliedObserver | None = None,
        owns: Callable[[int], bool] | None = None,
    ) -> None:
        """`owns` (cluster nodes): the devices this projector keeps in step (default: all); others are
        another node's, never caught up here, until `adopt` hands them over."""
        self.recorder = recorder
        self.root = root
        self._log = log_view
        self.batch_limit = batch_limit
        self.retry_seconds = retry_seconds
        self._on_batch = on_batch
        self.on_applied = on_applied  # hears of every commit, after the positions moved (the live stream)
        self._owns = owns
        self._positions: dict[int, Position] | None = None
        self._behind: set[int] = set()
        self._queue: list[_Item] = []  # submitted, for the next hot batch
        self._waiting: list[_Item] = []  # of devices behind: answered after the next catch-up batch
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._available = False
        self._outage_logged = False
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
        self._release_all()

    def submit(self, staged: Staged) -> asyncio.Future[bool]:
        """Hand over an event whose line has its place in the log. The answer is True once the read
        models reflect it, False if it is left to the catch-up path (which applies it later)."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        device_id = staged.appended.event.device_id
        if device_id in self.stopped:
            answer.set_result(False)
        elif self.failed is not None or self._stopping or not self.available:
            self._behind.add(device_id)
            self._wakeup.set()
            answer.set_result(False)
        else:
            self._queue.append(_Item(staged, answer))
            self._wakeup.set()
        return answer

    @property
    def behind(self) -> int:
        """Devices whose log is ahead of the recorder."""
        return len(self._behind) if self._positions is not None else len(self._log.devices())

    def caught_up(self, device_id: int) -> bool:
        """Does the recorder hold everything of this device's log that is not in a batch in hand?"""
        return (
            self.available
            and self._positions is not None
            and device_id not in self._behind
            and device_id not in self.stopped
            and (self._owns is None or self._owns(device_id))
        )

    async def adopt(self, device_ids: set[int]) -> None:
        """Take these devices over from another node: their positions are read from the recorder again,
        and those whose log is ahead of them are caught up."""
        positions = await self.recorder.positions()
        if self._positions is None:
            return  # the worker loads every position (of the devices owned by then) before its first batch
        for device_id in device_ids:
            self.stopped.pop(device_id, None)
            if (pos := positions.get(device_id)) is not None:
                self._positions[device_id] = pos
            else:
                self._positions.pop(device_id, None)
        behind = await asyncio.get_running_loop().run_in_executor(None, self._devices_behind, positions, device_ids)
        self._behind |= behind
        if behind:
            self._wakeup.set()

    def release(self, device_ids: set[int]) -> None:
        """Leave these devices to another node (nothing of theirs is submitted any more)."""
        self._behind -= device_ids

    def positions(self) -> dict[int, Position]:
        """How far the recorder holds each device's log, as of now (a copy; empty before positions load)."""
        return dict(self._positions or {})

    @property
    def queued(self) -> int:
        """Submitted events waiting for the next batch."""
        return len(self._queue)

    @property
    def available(self) -> bool:
        """Did the last attempt reach the recorder?"""
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        if value and not self._available and self._outage_logged:
            log.info("database reachable again; the read models catch up with the log")
            self._outage_logged = False
        self._available = value

    async def apply_log(self) -> None:
        """Apply everything in the log (replay and rebuild, with nothing else writing to the recorder).

        Reading and turning batch N+1 into rows (in a thread) overlaps the database
        writing batch N: either alone would leave the other side idle.
        """
        await self._load_positions()
        assert self._positions is not None
        loop = asyncio.get_running_loop()
        cursor = dict(self._positions)  # how far reading has got; self._positions: how far is committed
        writing: asyncio.Task[None] | None = None
        while True:
            found, changes = await loop.run_in_executor(None, self._prepare, sorted(self._behind), cursor)
            if writing is not None:
                await writing
            self._behind.difference_update(found.complete)
            if not found.placed:
                self._stop_all(found.stops)
                break
            writing = asyncio.create_task(self._write(found, changes))
        self._behind.clear()

    # ---------------------------------------------------------------- worker

    async def _run(self) -> None:
        while not self._stopping and self.failed is None:
            try:
                if self._positions is None:
                    await self._load_positions()
                if not self._queue and not self._behind:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if self._queue:
                    await self._apply_staged()
                if self._behind and not self._stopping:
                    await self._catch_up_batch()
                await asyncio.sleep(0)  # let handlers run between batches
            except DatabaseUnavailable as exc:
                self._release(self._waiting)
                self._waiting = []
                self._note_unavailable(exc)
                await self._sleep(self.retry_seconds)
            except LogUnavailable:
                continue  # those lines were never written; the batch's devices are re-read from the log
            except Exception as exc:  # a bug or bad data: stop loudly, never skip
                self._fail(exc)
                return

    async def _apply_staged(self) -> None:
        """The hot path: apply the submitted events that directly follow their device's position."""
        items, self._queue = self._queue[: self.batch_limit], self._queue[self.batch_limit :]
        try:
            placed = self._following(items)
            before_commit = _before_commit(i.staged.durable for i in items if i.staged.durable is not None)
            if placed:
                await self._commit(placed, before_commit=before_commit)
            elif before_commit is not None:
                await before_commit  # the catch-up path reads the lines left to it: they must be on disk first
        except BaseException:
            self._behind.update(i.staged.appended.event.device_id for i in items)
            self._release(items)
            raise
        self.available = True
        for item in items:
            held = self._holds(item.staged.appended)
            if not held and item.staged.appended.event.device_id in self._behind:
                self._waiting.append(item)
            else:
                _answer(item, held)

    def _following(self, items: list[_Item]) -> list[Placed]:
        """The events that directly follow their device's position, as placed lines; a device with an
        event that does not (a gap, an event out of order) is marked behind and none of its events kept."""
        assert self._positions is not None
        placed: list[Placed] = []
        ends: dict[int, tuple[str | None, int, int]] = {}  # device -> (day, end, line count) so far
        for item in sorted(items, key=_log_order):
            a = item.staged.appended
            device_id = a.event.device_id
            if device_id in self._behind or device_id in self.stopped:
                continue
            pos = self._positions.get(device_id)
            start = (pos.day, pos.byte_count, pos.line_count) if pos else (None, 0, 0)
            line_no = self._line_no_after(a, *(ends.get(device_id) or start))
            if line_no is None:
                self._behind.add(device_id)
                placed = [p for p in placed if p.event.device_id != device_id]
                continue
            placed.append(Placed(a.event, a.day, line_no, a.offset, a.length, a.hash, item.staged.parsed))
            ends[device_id] = (a.day, a.end, line_no)
        return placed

    def _line_no_after(self, a: Appended, day: str | None, end: int, lines: int) -> int | None:
        """The line number of `a` if its line directly follows a log ending at (day, end) after `lines`
        lines of that day (the next line of the file, or the first of a newer day's file once that file
        ended there); None if it does not."""
        if a.day == day and a.offset == end:
            return lines + 1
        if a.offset == 0 and (day is None or (a.day > day and self._file_size(a.event.device_id, day) == end)):
            return 1
        return None

    async def _catch_up_batch(self) -> None:
        """The catch-up path: the next lines of the devices behind, read from their files from their positions."""
        assert self._positions is not None
        if self._owns is not None:
            self._behind = {d for d in self._behind if self._owns(d)}
        devices = sorted(self._behind)
        cursor = {d: pos for d in devices if (pos := self._positions.get(d)) is not None}
        waiting, self._waiting = self._waiting, []
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                None, read_behind, self.root, self._log, devices, cursor, self.batch_limit
            )
            await self._write(found)
        except BaseException:
            self._release(waiting)
            raise
        # A device marked behind meanwhile (an event that could not follow while the batch was in the
        # database) stays behind.
        self._behind.difference_update(d for d in found.complete if self._holds_durable_end(d))
        self.available = True
        for item in waiting:
            _answer(item, self._holds(item.staged.appended))

    def _prepare(self, devices: list[int], cursor: dict[int, Position]) -> tuple[Lines, Changes | None]:
        """In a thread: the next batch of lines past `cursor` (advanced) of these devices, and its rows
        (None if they cannot be made: `_commit` then finds the line at fault)."""
        found = read_behind(self.root, self._log, devices, cursor, self.batch_limit)
        try:
            return found, changes_of(found.placed)
        except Exception:
            return found, None

    # ---------------------------------------------------------------- committing

    async def _write(self, found: Lines, changes: Changes | None = None) -> None:
        """Commit lines read from the files, then stop the devices whose reading ended at a non-event line."""
        if found.placed:
            await self._commit(found.placed, changes)
        self._stop_all(found.stops)

    async def _commit(
        self, placed: list[Placed], changes: Changes | None = None, before_commit: Awaitable[object] | None = None
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

    def _after_commit(self, placed: list[Placed], seconds: float) -> None:
        assert self._positions is not None
        for p in placed:
            pos = self._positions.get(p.event.device_id)
            if pos is None or (p.day, p.end) > (pos.day, pos.byte_count):
                self._positions[p.event.device_id] = Position(p.day, p.line_no, p.end, p.hash)
        self.stats.applied_events += len(placed)
        self.stats.last_applied_at = asyncio.get_running_loop().time()
        if self._on_batch is not None and placed:
            self._on_batch(len(placed), seconds)
        if self.on_applied is not None and placed:
            try:
                self.on_applied(placed)
            except Exception:  # an observer's bug must never stop the projection
                log.exception("the applied-events observer failed")

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

    # ---------------------------------------------------------------- positions

    async def _load_positions(self) -> None:
        positions = await self.recorder.positions()
        self._positions = positions
        self.available = True
        self._behind = await asyncio.get_running_loop().run_in_executor(None, self._devices_behind, positions)
        if self._behind:
            log.info("projection catching up", extra={"devices": len(self._behind)})

    def _devices_behind(self, positions: dict[int, Position], among: set[int] | None = None) -> set[int]:
        behind = set()
        for device_id in self._log.devices() if among is None else sorted(among):
            if device_id in self.stopped or (self._owns is not None and not self._owns(device_id)):
                continue
            end = self._log.durable_end(device_id)
            pos = positions.get(device_id)
            if end.day is not None and (pos is None or (end.day, end.size) > (pos.day, pos.byte_count)):
                behind.add(device_id)
        return behind

    def _holds(self, appended: Appended) -> bool:
        """Has this event's line been applied?"""
        assert self._positions is not None
        pos = self._positions.get(appended.event.device_id)
        return pos is not None and (pos.day, pos.byte_count) >= (appended.day, appended.end)

    def _holds_durable_end(self, device_id: int) -> bool:
        """Has everything on disk of this device's log been applied?"""
        assert self._positions is not None
        end = self._log.durable_end(device_id)
        pos = self._positions.get(device_id)
        return end.day is None or (pos is not None and (end.day, end.size) <= (pos.day, pos.byte_count))

    def _file_size(self, device_id: int, day: str) -> int:
        try:
            return log_path(self.root, device_id, day).stat().st_size
        except OSError:
            return -1

    # ---------------------------------------------------------------- outages and failures

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_signal(), timeout=seconds)
        except TimeoutError:
            pass

    async def _stop_signal(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            await self._wakeup.wait()

    def _release(self, items: list[_Item]) -> None:
        for item in items:
            _answer(item, False)

    def _release_all(self) -> None:
        self._release(self._queue)
        self._release(self._waiting)
        self._queue, self._waiting = [], []

    def _note_unavailable(self, exc: BaseException) -> None:
        """Log the database's loss (or its absence at start-up) once; its return is logged by `available`."""
        if self.available:
            log.error("database connection lost; events stay in the log until it returns: %s", exc)
        elif not self._outage_logged:
            log.error("database cannot be reached at start-up; events stay in the log until it answers: %s", exc)
        self._outage_logged = True
        self.available = False

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.stats.failures += 1
        log.error("projector stopped: %s", exc, exc_info=exc)
        self._release_all()
