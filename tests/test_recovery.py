"""Unit: start-up repair of power-loss tears (cut at every byte, zeroed blocks) and what verify says after."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import eventlog.files as files
import eventlog.recovery as recovery
from eventlog.events import PUSH, ZERO_HASH, Event, decode_line, encode_line, line_hash
from eventlog.files import log_path
from eventlog.recovery import TORN, quarantine_path, repair_all
from eventlog.store import LogStore
from eventlog.verify import RecordedFile, verify

DAY = "2026-03-01"
DEVICE = 6


def chain(count: int, device_id: int = DEVICE, prev: str = ZERO_HASH, pad: int = 0) -> list[bytes]:
    """`count` chained event lines (without newlines) of one device."""
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    lines = []
    for i in range(count):
        moment = start + timedelta(seconds=i)
        event = Event(f"0195-{device_id}-{i:06d}", PUSH, moment, device_id, 385, {"n": i, "pad": "x" * pad})
        line = encode_line(event, prev)
        lines.append(line)
        prev = line_hash(line)
    return lines


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """The loops below repair a file a thousand times: durability is not what they test."""
    monkeypatch.setattr(recovery.os, "fsync", lambda fd: None)


def joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def complete_lines(data: bytes) -> int:
    return data.count(b"\n")


class Disk:
    """One device's newest file under a fresh log root, rewritten for each case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = log_path(root, DEVICE, DAY)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes) -> None:
        quarantine_path(self.path).unlink(missing_ok=True)
        self.path.write_bytes(data)

    def torn(self) -> bytes:
        target = quarantine_path(self.path)
        return target.read_bytes() if target.exists() else b""


def recorded_all(lines: list[bytes]) -> dict[tuple[int, str], RecordedFile]:
    """What the database recorded after applying every line."""
    return {(DEVICE, DAY): RecordedFile(len(lines), line_hash(lines[-1]))}


def test_a_last_line_torn_at_every_byte_keeps_the_lines_before_it(log_root):
    lines = chain(6)
    good, last = joined(lines[:-1]), lines[-1] + b"\n"
    disk = Disk(log_root)
    for cut in range(len(last) + 1):
        disk.write(good + last[:cut])
        repairs = repair_all(log_root)
        if cut in (0, len(last)):
            assert repairs == [], cut
            continue
        [repair] = repairs
        assert (repair.kind, repair.path, repair.kept_bytes, repair.moved_bytes) == (TORN, disk.path, len(good), cut)
        assert disk.path.read_bytes() == good, cut
        assert disk.torn() == last[:cut] + b"\n", cut
        assert verify(log_root).ok, cut


def test_a_batch_torn_at_every_byte_keeps_its_complete_lines(log_root):
    lines = chain(12)
    good, batch = joined(lines[:9]), joined(lines[9:])  # three lines the store wrote in one write
    disk = Disk(log_root)
    for cut in range(len(batch) + 1):
        disk.write(good + batch[:cut])
        repair_all(log_root)
        kept = batch[: batch.rfind(b"\n", 0, cut) + 1]
        assert disk.path.read_bytes() == good + kept, cut
        rest = batch[len(kept) : cut]
        assert disk.torn() == (rest + b"\n" if rest else b""), cut
        assert cut % 97 or verify(log_root).ok, cut  # the kept bytes are whole lines; verify a sample


def test_a_batch_zero_filled_from_every_byte_keeps_the_lines_before_the_zeros(log_root):
    """The file's size reached the disk, its last data did not: zeros from some byte to the end."""
    lines = chain(12)
    good, batch = joined(lines[:9]), joined(lines[9:])
    disk = Disk(log_root)
    for cut in range(len(batch)):
        disk.write(good + batch[:cut] + b"\x00" * (len(batch) - cut))
        [repair] = repair_all(log_root)
        kept = batch[: batch.rfind(b"\n", 0, cut) + 1]  # lines whose newline comes before the first zero
        assert disk.path.read_bytes() == good + kept, cut
        assert repair.kept_bytes == len(good + kept) and "NUL" in repair.reason, cut
        assert disk.torn() == batch[len(kept) : cut] + b"\x00" * (len(batch) - cut) + b"\n", cut
        assert cut % 97 or verify(log_root).ok, cut


@pytest.mark.parametrize("lines_from_end", [1, 12, 30])
def test_a_zeroed_block_near_the_end_cuts_from_the_line_it_hits(log_root, lines_from_end):
    """4096 zeros over part of the file, valid lines after them: those are cut too, into .torn."""
    lines = chain(50, pad=150)
    data = bytearray(joined(lines))
    at = len(joined(lines[: len(lines) - lines_from_end])) - 100  # 100 bytes into the line before
    data[at : at + 4096] = b"\x00" * 4096
    disk = Disk(log_root)
    disk.write(bytes(data))
    [repair] = repair_all(log_root)
    first_hit = len(lines) - lines_from_end - 1  # 0-based index of the line the zeros begin in
    assert disk.path.read_bytes() == joined(lines[:first_hit])
    cut = bytes(data[repair.kept_bytes :])
    assert disk.torn() == cut + (b"" if cut.endswith(b"\n") else b"\n")
    assert verify(log_root).ok
    report = verify(log_root, recorded_all(lines))
    missing = f"lines {first_hit + 1} to {len(lines)} are missing"
    assert report.failure is not None and report.failure.startswith(f"{disk.path}: has {first_hit} lines")
    assert missing in report.failure
    assert quarantine_path(disk.path).name in report.failure


def test_a_zeroed_region_across_the_edge_of_the_read_window_is_found_whole(log_root, monkeypatch):
    """The window begins at a line start and grows while its first line is bad: zeros that begin
    before the window are cut from the line they begin in, whatever the window's size."""
    lines = chain(30)
    data = bytearray(joined(lines))
    begin = len(joined(lines[:18])) + 10  # inside line 19 ...
    end = len(joined(lines[:22])) + 5  # ... to inside line 23, lines 24-30 valid after it
    data[begin:end] = b"\x00" * (end - begin)
    expected = joined(lines[:18])
    disk = Disk(log_root)
    for window in range(len(data) - end, len(data) + 64, 19):
        monkeypatch.setattr(recovery._tail, "__defaults__", (window,))
        disk.write(bytes(data))
        [repair] = repair_all(log_root)
        assert disk.path.read_bytes() == expected, window
        assert repair.moved_bytes == len(data) - len(expected), window
    # A window that ends before the zeros does not see them: damage that old is not from the last
    # write. Start-up leaves it, and verify names the line.
    monkeypatch.setattr(recovery._tail, "__defaults__", (len(data) - len(joined(lines[:23])),))
    disk.write(bytes(data))
    assert repair_all(log_root) == []
    report = verify(log_root)
    assert report.failure is not None and report.failure.startswith(f"{disk.path}:19: not a valid event line: ")
    assert "NUL bytes" in report.failure


def test_zeros_at_the_start_of_the_newest_file_are_torn_not_foreign(log_root):
    lines = chain(5)
    data = bytearray(joined(lines))
    data[0:4096] = b"\x00" * 4096  # the whole file's first block never reached the disk
    disk = Disk(log_root)
    disk.write(bytes(data[: len(joined(lines))]))
    [repair] = repair_all(log_root)
    assert repair.kind == TORN and repair.kept_bytes == 0
    assert disk.path.read_bytes() == b"" and disk.torn().startswith(b"\x00")


def test_a_valid_file_is_left_alone(log_root):
    lines = chain(20)
    disk = Disk(log_root)
    disk.write(joined(lines))
    assert repair_all(log_root) == []
    assert disk.path.read_bytes() == joined(lines) and not quarantine_path(disk.path).exists()


def test_verify_names_the_single_missing_line(log_root):
    lines = chain(4)
    disk = Disk(log_root)
    disk.write(joined(lines[:-1]) + lines[-1][:10])
    repair_all(log_root)
    report = verify(log_root, recorded_all(lines))
    assert report.failure == (
        f"{disk.path}: has 3 lines but the database recorded 4: line 4 is missing (cut off the end)"
        f" ({quarantine_path(disk.path).name} holds what start-up cut off this file as a torn tail)"
    )
    assert any(note.startswith(f"{quarantine_path(disk.path)}: ") and "torn tail" in note for note in report.notes)


async def test_after_a_cut_and_new_appends_verify_points_at_the_torn_file(log_root):
    lines = chain(5)
    disk = Disk(log_root)
    disk.write(joined(lines[:2]) + b"\x00" * 300)
    store = LogStore(log_root, clock=lambda: datetime(2026, 3, 1, 13, 0, tzinfo=UTC))
    [repair] = await store.open()
    assert repair.kind == TORN and "torn log tail" in repair.message and str(disk.path) in repair.message
    for n in range(4):
        await store.append(store.new_event(PUSH, DEVICE, 385, {"n": n}))
    await store.close()
    after = disk.path.read_bytes().splitlines()
    assert decode_line(after[2])[1] == line_hash(lines[1])  # the chain goes on from the kept prefix
    assert verify(log_root).ok
    report = verify(log_root, recorded_all(lines))
    assert not report.ok and report.failure.startswith(f"{disk.path}:5: line does not match the hash recorded")
    assert quarantine_path(disk.path).name in report.failure


class _Counting:
    """A file handle that counts the bytes read through it."""

    def __init__(self, handle: Any, tally: list[int]) -> None:
        self._handle, self._tally = handle, tally

    def read(self, *args: Any) -> bytes:
        data: bytes = self._handle.read(*args)
        self._tally.append(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def test_start_up_reads_the_tail_window_and_first_lines_only(log_root, monkeypatch):
    old = log_path(log_root, DEVICE, "2026-02-28")
    old.parent.mkdir(parents=True)
    older_lines = chain(3000, pad=800)  # about 3 MB
    old.write_bytes(joined(older_lines))
    disk = Disk(log_root)
    lines = chain(3000, prev=line_hash(older_lines[-1]), pad=800)
    disk.write(joined(lines) + b'{"v":1,"id":"torn')
    tally: list[int] = []

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(*args, **kwargs)
        return _Counting(handle, tally) if "r" in str(args[1] if len(args) > 1 else kwargs.get("mode", "r")) else handle

    monkeypatch.setattr(recovery, "open", counting_open, raising=False)
    monkeypatch.setattr(files, "open", counting_open, raising=False)
    [repair] = repair_all(log_root)
    assert repair.kept_bytes == len(joined(lines))
    # One window (from the start of the line it begins in), and a first chunk of each file.
    assert sum(tally) < (1 << 20) + 4 * 8192
