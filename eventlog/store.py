"""The append-only log store: hash-chained lines, group commit, durable acknowledgement.

Writers hand an event to `queue` (or `append`, which waits for it), which queues it
with two futures. One flusher task takes everything queued, chains and encodes the
lines in queue order (resolving each event's `placed` future: where its line goes),
writes each touched file once, fdatasyncs the touched files in parallel threads, and
only then resolves the `durable` futures. So an append returns only when its line is on
disk, many concurrent appends share one flush, and whoever works on a line's place (the
projector) can start before the fsync ends.

"On disk" means in the file at the log path. A descriptor keeps writing to its inode
after the file at its path was replaced (`sed -i` writes a new file and renames it
over the old one) or removed, and such lines are in no file anyone will read. So after
the fdatasync every written file is stat'ed by path and compared with the descriptor's
device, inode and expected size. When they differ, nothing of that device in the batch
is acknowledged: if the file now at the path holds exactly the bytes the chain had
before the batch (a copy, an edit that changed nothing), the lines are written again
to it and acknowledged; otherwise the device's appends are refused (LogUnavailable,
answered 503) until a restart reads its chain head from the files again, rather than
continuing a chain whose earlier lines are not what was acknowledged. Other devices of
the batch are acknowledged normally.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
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
from eventlog.files import (
    LogEnd,
    LogFiles,
    device_days,
    device_dir,
    device_ids,
    fsync_dir,
    last_line_and_size,
    log_path,
)
from eventlog.recovery import Repair, repair_all

log = logging.getLogger("tlink.eventlog")

COMPARE_CHUNK = 1 << 20


class LogUnavailable(EventLogError):
    """The log could not be written: the appends failed with it are not acknowledged, and nothing of
    them is left at the log path (unless someone else changed the file in place)."""


class LogLocked(EventLogError):
    """Another process is writing to this log root."""


def lock_root(root: Path, shared: bool = False) -> int:
    """Take the root's writer lock (flock on the folder; the kernel drops it when the process dies).

    Two writers would fork the hash chains, so a second one must not start. `shared`: the
    lock of a cluster node, which shares the root with the other nodes (each device has one
    writer at a time by its partition's lease), and which no single-node service may join.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's failure as seen: whoever needs the answer awaits the other future of the pair."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True, slots=True)
class Queued:
    """An event handed to the store, and the two moments of its line.

    `placed`: where the line goes, known once the flusher has chained it, before it is
    written. `durable`: the same Appended once the line is on disk; LogUnavailable if it
    never will be (then nothing of it is at the log path), which `placed` also raises
    when the event was refused before it got a place.
    """

    event: Event
    placed: asyncio.Future[Appended]
    durable: asyncio.Future[Appended]

    def fail(self, error: BaseException) -> None:
        """Answer both moments that are still open with `error`."""
        for future in (self.placed, self.durable):
            if not future.done():
                future.set_exception(error)


@dataclass(slots=True)
class _Open:
    """An open log file: our descriptor, its path, and the identity of the file we opened."""

    fd: int
    path: str
    dev: int
    ino: int


@dataclass(slots=True)
class _Chunk:
    """The lines of one flush for one file, and where in the file they go."""

    device_id: int
    day: str
    start: int  # the file's size before these lines
    lines: list[bytes] = field(default_factory=list)
    data: bytes = b""
    file: _Open | None = None
    changed_in_place: bool = False  # someone else wrote to the file: what of it is ours is not known
    off_path: bool = False  # `file` is no longer at the path (replaced or removed)

    @property
    def end(self) -> int:
        """The file's size once these lines are in it."""
        return self.start + len(self.data)


@dataclass(frozen=True, slots=True)
class _Mismatch:
    """How the file at a log path differs from the one our descriptor wrote to."""

    kind: str  # "gone" (nothing there), "replaced" (another inode), "resized" (same inode, changed in place)
    detail: str


@dataclass(slots=True)
class _Batch:
    """Lines of one flush, grouped by file."""

    items: list[tuple[Queued, Appended]] = field(default_factory=list)
    buffers: dict[tuple[int, str], _Chunk] = field(default_factory=dict)
    before: dict[int, _Head] = field(default_factory=dict)
    new_files: list[Path] = field(default_factory=list)


FlushObserver = Callable[[int, int, float], None]  # (lines, bytes, fsync seconds)
Fence = Callable[[int], str | None]  # device -> why this process may not append to it now (None: it may)


class LogStore:
    """Per-device daily JSON Lines files under `root`."""

    def __init__(
        self,
        root: Path,
        clock: Callable[[], datetime] = utc_now,
        flush_threads: int = 8,
        max_open_files: int = 1024,
        on_flush: FlushObserver | None = None,
        fence: Fence | None = None,
    ) -> None:
        """`fence` (cluster nodes): asked for every line just before its batch is written; a line it
        refuses fails with LogUnavailable, and the open root is shared (`lock_root`) and repaired device
        by device by whoever takes a device over, rather than whole at `open`."""
        self.root = root
        self._clock = clock
        self._heads: dict[int, _Head] = {}
        self._durable: dict[int, LogEnd] = {}
        self._fds: OrderedDict[tuple[int, str], _Open] = OrderedDict()
        self._refused: dict[int, str] = {}  # device -> why its appends are refused (until a restart)
        self._max_open = max_open_files
        self._queue: list[Queued] = []
        self._wakeup = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fsync")
        self._helpers = ThreadPoolExecutor(max(1, flush_threads - 1), thread_name_prefix="fsync-helper")
        self._sync_threads = flush_threads
        self._task: asyncio.Task[None] | None = None
        self._last_instant: datetime | None = None
        self._closing = False
        self._on_flush = on_flush
        self._fence = fence
        self._lock_fd: int | None = None
        self.repairs: list[Repair] = []

    async def open(self) -> list[Repair]:
        """Take the writer lock, repair torn tails, start the flusher; returns the repairs made."""
        self._lock_fd = lock_root(self.root, shared=self._fence is not None)
        if self._fence is None:
            self.repairs = await asyncio.get_running_loop().run_in_executor(None, repair_all, self.root)
        self._task = asyncio.create_task(self._flusher(), name="eventlog-flusher")
        return self.repairs

    async def close(self) -> None:
        """Flush what is queued, stop the flusher, close files."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        for file in self._fds.values():
            os.close(file.fd)
        self._fds.clear()
        self._pool.shutdown(wait=True)
        self._helpers.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def new_event(
        self,
        type_: str,
        device_id: int,
        user_id: int,
        body: dict[str, Any],
        request: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> Event:
        """An event stamped now; stamps never go backwards, so queue order is time order."""
        now = self._clock()
        if self._last_instant is not None and now < self._last_instant:
            now = self._last_instant
        self._last_instant = now
        ms = int(now.timestamp() * 1000)
        return Event(new_event_id(ms), type_, now, device_id, user_id, body, request, source)

    async def append(self, event: Event) -> Appended:
        """Append one event; returns once its line is durable (LogUnavailable otherwise)."""
        return await self.queue(event).durable

    def queue(self, event: Event) -> Queued:
        """Queue one event for the next flush (LogUnavailable now if the log cannot take it)."""
        if self._closing or self._task is None:
            raise LogUnavailable("the event log is not open")
        if event.device_id in self._refused:
            raise self._refusal(event.device_id)
        loop = asyncio.get_running_loop()
        queued = Queued(event, loop.create_future(), loop.create_future())
        for future in (queued.placed, queued.durable):  # a waiter may await only one of them
            future.add_done_callback(_retrieve)
        self._queue.append(queued)
        self._wakeup.set()
        return queued

    def forget(self, device_ids: set[int]) -> None:
        """Drop what is known of these devices' chains (another process may have appended since): the next
        append reads their heads from the files again. Only for devices with nothing queued."""
        for device_id in device_ids:
            self._heads.pop(device_id, None)
            self._durable.pop(device_id, None)
            self._refused.pop(device_id, None)
        for key in [k for k in self._fds if k[0] in device_ids]:
            os.close(self._fds.pop(key).fd)

    def durable_end(self, device_id: int) -> LogEnd:
        """Where a device's log on disk ends: nothing past this is unflushed (for a device another
        process writes, the files as they stand: `LogFiles`)."""
        if self._fence is not None and self._fence(device_id) is not None:
            return LogFiles(self.root).durable_end(device_id)
        if device_id not in self._durable:
            self._load_head(device_id)
        return self._durable[device_id]

    def devices(self) -> list[int]:
        """Devices with a folder under the root."""
        return device_ids(self.root)

    @property
    def refused(self) -> dict[int, str]:
        """Devices whose appends are refused until a restart, and why."""
        return dict(self._refused)

    def _refusal(self, device_id: int) -> LogUnavailable:
        return LogUnavailable(f"appends of device {device_id} are refused until a restart: {self._refused[device_id]}")

    async def _flusher(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if batch:
                await self._flush(batch)
            elif self._closing:
                return

    async def _flush(self, pending: list[Queued]) -> None:
        batch = _Batch()
        try:
            for item in pending:
                if item.event.device_id in self._refused:  # queued before its device was refused
                    item.fail(self._refusal(item.event.device_id))
                    continue
                if self._fence is not None and (why := self._fence(item.event.device_id)) is not None:
                    item.fail(LogUnavailable(f"device {item.event.device_id} not appended: {why}"))
                    continue
                self._stage(batch, item)
            if not batch.items:
                return
            for item, appended in batch.items:
                item.placed.set_result(appended)
            started = asyncio.get_running_loop().time()
            refused = await self._write_and_sync(batch)
            elapsed = asyncio.get_running_loop().time() - started
        except Exception as exc:  # disk full, I/O error: the whole batch fails, heads roll back
            self._roll_back(batch)
            error = LogUnavailable(f"could not write the event log: {exc}")
            for item in pending:
                item.fail(error)
            return
        for device_id, reason in refused.items():
            self._heads[device_id] = batch.before[device_id]
            self._refused[device_id] = reason
            log.error(
                "event log of device %s: %s. The %d line(s) of this flush for the device are not acknowledged "
                "and its appends are refused (503) until a restart reads its chain from the files again. Live log "
                "files must never be edited in place: put the file back as it was (or check it with "
                "`tlink-push verify`), then restart.",
                device_id,
                reason,
                sum(1 for _, a in batch.items if a.event.device_id == device_id),
            )
        lines = size = 0
        for item, appended in batch.items:
            device_id = appended.event.device_id
            if device_id in refused:
                item.fail(self._refusal(device_id))
                continue
            self._durable[device_id] = LogEnd(appended.day, appended.end)
            lines, size = lines + 1, size + appended.length
            if not item.durable.done():
                item.durable.set_result(appended)
        if self._on_flush is not None and lines:
            self._on_flush(lines, size, elapsed)

    def _stage(self, batch: _Batch, item: Queued) -> None:
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
        chunk = batch.buffers.get((event.device_id, head.day))
        if chunk is None:
            chunk = batch.buffers[(event.device_id, head.day)] = _Chunk(event.device_id, head.day, head.size)
        chunk.lines.append(line + b"\n")
        batch.items.append((item, appended))
        head.size += len(line) + 1
        head.last_hash = digest

    async def _write_and_sync(self, batch: _Batch) -> dict[int, str]:
        """Write, fdatasync and check every file of the batch; returns the devices refused, and why."""
        chunks = []
        dirs: set[Path] = set()
        for (device_id, day), chunk in batch.buffers.items():
            chunk.file = self._fd(device_id, day, dirs)
            chunk.data = b"".join(chunk.lines)
            if os.write(chunk.file.fd, chunk.data) != len(chunk.data):
                raise OSError("short write")
            chunks.append(chunk)
        dirs.update(p.parent for p in batch.new_files)
        # Files synced in parallel cost a fraction of one after another, but every hop
        # between the event loop and a thread costs the loop CPU: one thread takes the
        # whole flush and hands shares of it to helper threads.
        shares = [chunks[i :: self._sync_threads] for i in range(min(self._sync_threads, len(chunks)))]
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._pool, self._sync_shares, shares, sorted(dirs))
        refused = await loop.run_in_executor(self._pool, self._settle, batch, found) if found else {}
        if batch.new_files or len(self._fds) > self._max_open:
            self._close_stale(set(batch.buffers))
        return refused

    def _sync_shares(self, shares: list[list[_Chunk]], dirs: list[Path]) -> list[tuple[_Chunk, _Mismatch]]:
        """In a pool thread: fdatasync and check every share of the files in parallel, then sync the
        new files' folders; returns the files no longer at their path."""
        helpers = [self._helpers.submit(_sync_and_check, share) for share in shares[1:]]
        found: list[tuple[_Chunk, _Mismatch]] = []
        try:
            if shares:
                found += _sync_and_check(shares[0])
        finally:
            for helper in helpers:
                found += helper.result()  # waits for every share even when one failed; raises the first error
        for folder in dirs:
            fsync_dir(folder)
        return found

    def _settle(self, batch: _Batch, found: list[tuple[_Chunk, _Mismatch]]) -> dict[int, str]:
        """In the pool thread: for each device with a file no longer at its path, write the lines again
        to the file now there if it holds exactly the log so far; otherwise refuse the device."""
        by_device: dict[int, list[tuple[_Chunk, _Mismatch]]] = {}
        for chunk, mismatch in found:
            by_device.setdefault(chunk.device_id, []).append((chunk, mismatch))
        refused: dict[int, str] = {}
        for device_id, problems in by_device.items():
            try:
                reason = self._write_again(problems)
            except OSError as exc:
                paths = ", ".join(_path_of(c) for c, _ in problems)
                reason = f"{paths} was replaced, and writing the lines again to it failed: {exc}"
            if reason is not None:
                kept = self._drop_device(device_id, [c for c in batch.buffers.values() if c.device_id == device_id])
                refused[device_id] = "; ".join([reason, *kept])
        return refused

    def _write_again(self, problems: list[tuple[_Chunk, _Mismatch]]) -> str | None:
        """Take over the files now at the paths and write the batch's lines to them again, if each
        holds exactly the bytes of the old one before the batch; None once done, else why not."""
        for chunk, mismatch in problems:
            chunk.changed_in_place = mismatch.kind == "resized"
            chunk.off_path = mismatch.kind != "resized"
        for chunk, mismatch in problems:
            if mismatch.kind != "replaced":
                return f"{_path_of(chunk)} {mismatch.detail}"
        adopted: list[tuple[_Chunk, _Open]] = []
        reason: str | None = "the replacement could not be read"
        try:
            for chunk, _ in problems:
                reason = self._adopt(chunk, adopted)
                if reason is not None:
                    return reason
        finally:
            if reason is not None:
                for _, fresh in adopted:
                    os.close(fresh.fd)
        for chunk, fresh in adopted:  # from here on the new files are ours; the old inodes are let go
            assert chunk.file is not None
            _cut(chunk.file, chunk.start, chunk.end)  # our unacknowledged bytes off the old inode
            os.close(chunk.file.fd)
            chunk.file = self._fds[(chunk.device_id, chunk.day)] = fresh
            chunk.off_path = False
        for chunk, fresh in adopted:
            if os.write(fresh.fd, chunk.data) != len(chunk.data):
                raise OSError("short write")
            os.fdatasync(fresh.fd)
        for folder in {os.path.dirname(fresh.path) for _, fresh in adopted}:
            fsync_dir(Path(folder))  # the rename that put the new file there must survive a crash too
        for chunk, _ in adopted:
            if (again := _mismatch(chunk)) is not None:
                chunk.changed_in_place, chunk.off_path = again.kind == "resized", again.kind != "resized"
                return f"{_path_of(chunk)} was replaced behind the service, then {again.detail} as well"
        for chunk, _ in adopted:
            log.warning(
                "event log file %s was replaced behind the service by an identical copy; the %d line(s) of this "
                "flush went to the old file and were written again to the new one (never edit live log files)",
                _path_of(chunk),
                len(chunk.lines),
            )
        return None

    @staticmethod
    def _adopt(chunk: _Chunk, adopted: list[tuple[_Chunk, _Open]]) -> str | None:
        """Open the file now at the chunk's path (added to `adopted`); None if it holds exactly the
        bytes the old file had before this flush, else how it differs."""
        assert chunk.file is not None
        path = chunk.file.path
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)  # never created: a file that went is a refusal
        except OSError as exc:
            return f"{path} was replaced behind the service, then could not be opened: {exc.strerror}"
        try:
            stat = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        adopted.append((chunk, _Open(fd, path, stat.st_dev, stat.st_ino)))
        difference = _difference(chunk.file.fd, fd, chunk.start, stat.st_size)
        if difference is not None:
            return f"{path} was replaced behind the service by a file that is not the log as written: {difference}"
        return None

    def _drop_device(self, device_id: int, chunks: list[_Chunk]) -> list[str]:
        """A refused device: keep what was acknowledged of files no longer at their path, take the
        batch's bytes off the files we wrote them to, close its files; returns what was kept where."""
        kept = []
        for chunk in chunks:
            if chunk.file is None:
                continue
            if chunk.off_path:
                kept.append(_keep_old(chunk.file, chunk.start))
            if not chunk.changed_in_place:
                _cut(chunk.file, chunk.start, chunk.end)
        for key in [k for k in self._fds if k[0] == device_id]:
            os.close(self._fds.pop(key).fd)
        return kept

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
        """Cut a file back to `size`, only through our own descriptor: a file we hold none of (a path
        that could not be opened, or a file put at the path behind our back) is not ours to change."""
        file = self._fds.get((device_id, day))
        if file is None:
            return
        try:
            if os.fstat(file.fd).st_size > size:
                os.ftruncate(file.fd, size)
        except OSError:
            pass  # recovery at the next start cuts a torn tail anyway

    def _fd(self, device_id: int, day: str, new_dirs: set[Path]) -> _Open:
        """The open file (opened, and its folder made, if need be)."""
        key = (device_id, day)
        file = self._fds.get(key)
        if file is not None:
            self._fds.move_to_end(key)
            return file
        folder = device_dir(self.root, device_id)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            new_dirs.add(self.root)  # the new folder's entry is synced with the batch
        path = str(log_path(self.root, device_id, day))
        # Read-write, so that a replacement can be compared with what we wrote.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            stat = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        file = self._fds[key] = _Open(fd, path, stat.st_dev, stat.st_ino)
        return file

    def _close_stale(self, in_use: set[tuple[int, str]]) -> None:
        """After a flush: close passed days' files (never written again) and the least used beyond the cap."""
        newest: dict[int, str] = {}
        for device_id, day in self._fds:
            if day > newest.get(device_id, ""):
                newest[device_id] = day
        for key in [k for k in self._fds if k[1] < newest[k[0]] and k not in in_use]:
            os.close(self._fds.pop(key).fd)
        for key in [k for k in self._fds if k not in in_use][: max(0, len(self._fds) - self._max_open)]:
            os.close(self._fds.pop(key).fd)

    def _load_head(self, device_id: int) -> _Head:
        head = self._heads.get(device_id)
        if head is None:
            head = _read_head(self.root, device_id)
            self._heads[device_id] = head
            self._durable[device_id] = LogEnd(head.day, head.size)
        return head


def _path_of(chunk: _Chunk) -> str:
    assert chunk.file is not None
    return chunk.file.path


def _sync_and_check(chunks: list[_Chunk]) -> list[tuple[_Chunk, _Mismatch]]:
    """fdatasync the files, then check each is still the file at its path (one stat each)."""
    for chunk in chunks:
        assert chunk.file is not None
        os.fdatasync(chunk.file.fd)
    return [(chunk, mismatch) for chunk in chunks if (mismatch := _mismatch(chunk)) is not None]


def _mismatch(chunk: _Chunk) -> _Mismatch | None:
    """How the file at the chunk's path is not the one its descriptor wrote to, if it is not."""
    file = chunk.file
    assert file is not None
    try:
        stat = os.stat(file.path)
    except FileNotFoundError:
        return _Mismatch("gone", "was removed behind the service")
    except OSError as exc:
        return _Mismatch("gone", f"cannot be checked: {exc.strerror}")
    if stat.st_ino != file.ino or stat.st_dev != file.dev:
        return _Mismatch("replaced", "was replaced behind the service")
    if stat.st_size != chunk.end:
        return _Mismatch("resized", f"was changed in place: {stat.st_size} bytes where the log has {chunk.end}")
    return None


def _difference(old_fd: int, new_fd: int, size: int, new_size: int) -> str | None:
    """How the new file differs from the first `size` bytes of the old one (None: not at all)."""
    if new_size < size:
        return f"{new_size} bytes where {size} were acknowledged (acknowledged lines are missing)"
    if new_size > size:
        return f"{new_size} bytes where the log had {size}"
    at = 0
    while at < size:
        step = min(COMPARE_CHUNK, size - at)
        old, new = os.pread(old_fd, step, at), os.pread(new_fd, step, at)
        if old != new:
            same = min(len(old), len(new))
            differs = next((i for i, (x, y) in enumerate(zip(old, new, strict=False)) if x != y), same)
            return f"its bytes differ from byte {at + differs} on"
        if len(old) < step:
            return "it changed while it was compared"
        at += step
    return None


def _keep_old(file: _Open, size: int) -> str:
    """Copy the first `size` bytes (the acknowledged log) of a file no longer at its path next to the
    path, before our descriptor, perhaps the last link to it, is closed; says where (or why not)."""
    if size == 0:
        return "nothing of the old file had been acknowledged"
    try:
        if os.fstat(file.fd).st_nlink > 0:
            return "the old file still exists under another name"
        for n in range(100):
            target = f"{file.path}.replaced" + (f".{n}" if n else "")
            try:
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            try:
                at = 0
                while at < size:
                    chunk = os.pread(file.fd, min(COMPARE_CHUNK, size - at), at)
                    if not chunk:
                        break
                    at += os.write(out, chunk)
                os.fsync(out)
            finally:
                os.close(out)
            fsync_dir(Path(target).parent)
            return f"the log as it was acknowledged ({at} bytes) is kept in {target}"
        return "no name was free to keep the old file's content"
    except OSError as exc:
        return f"the old file's content could not be kept: {exc}"


def _cut(file: _Open, start: int, end: int) -> None:
    """Take one flush's bytes [start, end) off a file we wrote them to, through our own descriptor,
    when its size shows nothing but them was added."""
    try:
        if start < os.fstat(file.fd).st_size <= end:
            os.ftruncate(file.fd, start)
    except OSError:
        pass


def _read_head(root: Path, device_id: int) -> _Head:
    for day in reversed(device_days(root, device_id)):
        path = log_path(root, device_id, day)
        raw, size = last_line_and_size(path)
        if raw is not None:  # an empty file chains from the file before it
            return _Head(day, size, line_hash(raw))
    return _Head(None, 0, ZERO_HASH)
