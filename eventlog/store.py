"""The append-only log store: hash-chained lines, group commit, durable acknowledgement.

Writers hand an event to `append`, which queues it with a future. One flusher task
takes everything queued, chains and encodes the lines in queue order, writes each
touched file once, fdatasyncs the touched files in parallel threads, and only then
resolves the futures. So an append returns only when its line is on disk, and many
concurrent appends share one flush.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from eventlog.events import (
    ZERO_HASH,
    Event,
    EventLogError,
    encode_line,
    line_hash,
    new_event_id,
    utc_now,
)
from eventlog.files import device_days, device_dir, device_ids, fsync_dir, last_line_and_size, log_path
from eventlog.recovery import Repair, repair_all


class LogUnavailable(EventLogError):
    """The log could not be written; nothing of the failed batch is on disk."""


class LogLocked(EventLogError):
    """Another process is writing to this log root."""


def lock_root(root: Path) -> int:
    """Take the root's writer lock (flock on the folder; the kernel drops it when the process dies).

    Two writers would fork the hash chains, so a second one must not start.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogLocked(f"another process (a running service?) is writing to the log root {root}") from None
    return fd


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an event's line landed."""

    event: Event
    day: str
    offset: int
    length: int  # bytes including the newline
    hash: str
    prev: str

    @property
    def end(self) -> int:
        """Offset just past the line's newline."""
        return self.offset + self.length


@dataclass(slots=True)
class _Head:
    """The end of one device's chain: its newest file and last line."""

    day: str | None
    size: int
    last_hash: str


@dataclass(slots=True)
class _Pending:
    event: Event
    future: asyncio.Future[Appended]


@dataclass(slots=True)
class _Batch:
    """Lines of one flush, grouped by file."""

    items: list[tuple[_Pending, Appended]] = field(default_factory=list)
    buffers: dict[tuple[int, str], list[bytes]] = field(default_factory=dict)
    before: dict[int, _Head] = field(default_factory=dict)
    new_files: list[Path] = field(default_factory=list)


FlushObserver = Callable[[int, int, float], None]  # (lines, bytes, fsync seconds)
# Hears of a batch of lines before they are written; the future resolves once they are
# durable (or fails: then they were never written). Lets work overlap the fsync.
StagedListener = Callable[[list[Appended], "asyncio.Future[None]"], None]


class LogStore:
    """Per-device daily JSON Lines files under `root`."""

    def __init__(
        self,
        root: Path,
        clock: Callable[[], datetime] = utc_now,
        flush_threads: int = 8,
        max_open_files: int = 1024,
        on_flush: FlushObserver | None = None,
    ) -> None:
        self.root = root
        self._clock = clock
        self._heads: dict[int, _Head] = {}
        self._durable: dict[int, tuple[str | None, int]] = {}
        self._fds: OrderedDict[tuple[int, str], int] = OrderedDict()
        self._max_open = max_open_files
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fsync")
        self._helpers = ThreadPoolExecutor(max(1, flush_threads - 1), thread_name_prefix="fsync-helper")
        self._sync_threads = flush_threads
        self._task: asyncio.Task[None] | None = None
        self._last_instant: datetime | None = None
        self._closing = False
        self._on_flush = on_flush
        self._lock_fd: int | None = None
        self.on_staged: StagedListener | None = None
        self.repairs: list[Repair] = []

    async def open(self) -> list[Repair]:
        """Take the writer lock, repair torn tails, start the flusher; returns the repairs made."""
        self._lock_fd = lock_root(self.root)
        self.repairs = await asyncio.get_running_loop().run_in_executor(None, repair_all, self.root)
        self._task = asyncio.create_task(self._flusher(), name="eventlog-flusher")
        return self.repairs

    async def close(self) -> None:
        """Flush what is queued, stop the flusher, close files."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pool.shutdown(wait=True)
        self._helpers.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def new_event(self, type_: str, device_id: int, user_id: int, body: dict[str, Any]) -> Event:
        """An event stamped now; stamps never go backwards, so queue order is time order."""
        now = self._clock()
        if self._last_instant is not None and now < self._last_instant:
            now = self._last_instant
        self._last_instant = now
        ms = int(now.timestamp() * 1000)
        return Event(new_event_id(ms), type_, now, device_id, user_id, body)

    async def append(self, event: Event) -> Appended:
        """Append one event; returns once its line is durable (LogUnavailable otherwise)."""
        if self._closing or self._task is None:
            raise LogUnavailable("the event log is not open")
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(event, future))
        self._wakeup.set()
        return await future

    def durable_end(self, device_id: int) -> tuple[str | None, int]:
        """(newest day, bytes of it on disk) of a device: nothing past this is unflushed."""
        if device_id not in self._durable:
            self._load_head(device_id)
        return self._durable[device_id]

    def devices(self) -> list[int]:
        """Devices with a folder under the root."""
        return device_ids(self.root)

    async def _flusher(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if batch:
                await self._flush(batch)
            elif self._closing:
                return

    async def _flush(self, pending: list[_Pending]) -> None:
        batch = _Batch()
        durable: asyncio.Future[None] | None = None
        try:
            for item in pending:
                self._stage(batch, item)
            if self.on_staged is not None:
                durable = asyncio.get_running_loop().create_future()
                self.on_staged([appended for _, appended in batch.items], durable)
            started = asyncio.get_running_loop().time()
            await self._write_and_sync(batch)
            elapsed = asyncio.get_running_loop().time() - started
        except Exception as exc:  # disk full, I/O error: the whole batch fails, heads roll back
            self._roll_back(batch)
            error = LogUnavailable(f"could not write the event log: {exc}")
            if durable is not None:
                durable.set_exception(error)
            for item in pending:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        if durable is not None:
            durable.set_result(None)
        for item, appended in batch.items:
            self._durable[appended.event.device_id] = (appended.day, appended.end)
            if not item.future.done():
                item.future.set_result(appended)
        if self._on_flush is not None:
            size = sum(a.length for _, a in batch.items)
            self._on_flush(len(batch.items), size, elapsed)

    def _stage(self, batch: _Batch, item: _Pending) -> None:
        event = item.event
        head = self._load_head(event.device_id)
        batch.before.setdefault(event.device_id, _Head(head.day, head.size, head.last_hash))
        day = event.day
        if head.day is None or day > head.day:
            head.day, head.size = day, 0
            batch.new_files.append(log_path(self.root, event.device_id, day))
        # A stamp can only be older than the head's day by the width of a midnight
        # race; such a line joins the current file, which is the one still open.
        line = encode_line(event, head.last_hash)
        digest = line_hash(line)
        appended = Appended(event, head.day, head.size, len(line) + 1, digest, head.last_hash)
        batch.buffers.setdefault((event.device_id, head.day), []).append(line + b"\n")
        batch.items.append((item, appended))
        head.size += len(line) + 1
        head.last_hash = digest

    async def _write_and_sync(self, batch: _Batch) -> None:
        fds = []
        dirs: set[Path] = set()
        for (device_id, day), lines in batch.buffers.items():
            fd = self._fd(device_id, day, dirs)
            data = b"".join(lines)
            if os.write(fd, data) != len(data):
                raise OSError("short write")
            fds.append(fd)
        dirs.update(p.parent for p in batch.new_files)
        # Files synced in parallel cost a fraction of one after another, but every hop
        # between the event loop and a thread costs the loop CPU: one thread takes the
        # whole flush and hands shares of it to helper threads.
        shares = [fds[i :: self._sync_threads] for i in range(min(self._sync_threads, len(fds)))]
        await asyncio.get_running_loop().run_in_executor(self._pool, self._sync_shares, shares, sorted(dirs))
        if batch.new_files or len(self._fds) > self._max_open:
            self._close_stale(set(batch.buffers))

    def _sync_shares(self, shares: list[list[int]], dirs: list[Path]) -> None:
        """In a pool thread: fdatasync every share of the files in parallel, then the new files' folders."""
        helpers = [self._helpers.submit(_sync_all, share) for share in shares[1:]]
        try:
            if shares:
                _sync_all(shares[0])
        finally:
            for helper in helpers:
                helper.result()  # waits for every share even when one failed; raises the first error
        for folder in dirs:
            fsync_dir(folder)

    def _roll_back(self, batch: _Batch) -> None:
        """Cut anything of the failed batch off the files and restore the chain heads."""
        for device_id, before in batch.before.items():
            head = self._heads[device_id]
            if head.day is not None and head.day != before.day:
                self._truncate(device_id, head.day, 0)
            if before.day is not None:
                self._truncate(device_id, before.day, before.size)
            self._heads[device_id] = before

    def _truncate(self, device_id: int, day: str, size: int) -> None:
        fd = self._fds.get((device_id, day))
        try:
            if fd is not None:
                os.ftruncate(fd, size)
            elif size == 0:
                log_path(self.root, device_id, day).unlink(missing_ok=True)
        except OSError:
            pass  # recovery at the next start cuts a torn tail anyway

    def _fd(self, device_id: int, day: str, new_dirs: set[Path]) -> int:
        """The open descriptor of a file (opened, and its folder made, if need be)."""
        key = (device_id, day)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        folder = device_dir(self.root, device_id)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            new_dirs.add(self.root)  # the new folder's entry is synced with the batch
        fd = os.open(log_path(self.root, device_id, day), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fds[key] = fd
        return fd

    def _close_stale(self, in_use: set[tuple[int, str]]) -> None:
        """After a flush: close passed days' files (never written again) and the least used beyond the cap."""
        newest: dict[int, str] = {}
        for device_id, day in self._fds:
            if day > newest.get(device_id, ""):
                newest[device_id] = day
        for key in [k for k in self._fds if k[1] < newest[k[0]] and k not in in_use]:
            os.close(self._fds.pop(key))
        for key in [k for k in self._fds if k not in in_use][: max(0, len(self._fds) - self._max_open)]:
            os.close(self._fds.pop(key))

    def _load_head(self, device_id: int) -> _Head:
        head = self._heads.get(device_id)
        if head is None:
            head = _read_head(self.root, device_id)
            self._heads[device_id] = head
            self._durable[device_id] = (head.day, head.size)
        return head


def _sync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)


def _read_head(root: Path, device_id: int) -> _Head:
    for day in reversed(device_days(root, device_id)):
        path = log_path(root, device_id, day)
        raw, size = last_line_and_size(path)
        if raw is not None:  # an empty file chains from the file before it
            return _Head(day, size, line_hash(raw))
    return _Head(None, 0, ZERO_HASH)
