"""Unit: the log store (chain, group commit, daily files), torn-tail repair, and verify."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from eventlog.events import PUSH, ZERO_HASH, decode_line, line_hash
from eventlog.files import device_days, log_path
from eventlog.recovery import quarantine_path, repair_all
from eventlog.store import LogLocked, LogStore, LogUnavailable
from eventlog.verify import RecordedFile, verify
from tests.conftest import Clock


@pytest.fixture
def clock():
    return Clock(datetime(2026, 3, 1, 23, 59, 0, tzinfo=UTC))


@pytest.fixture
async def store(log_root, clock):
    flushes: list[tuple[int, int, float]] = []
    store = LogStore(log_root, clock=clock, on_flush=lambda *args: flushes.append(args))
    store.flushes = flushes  # type: ignore[attr-defined]
    await store.open()
    yield store
    await store.close()


async def append(store: LogStore, device_id: int, n: int = 0):
    return await store.append(store.new_event(PUSH, device_id, 385, {"n": n, "deviceId": device_id}))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


async def test_lines_chain_within_and_across_days(store, log_root, clock):
    first = await append(store, 5, 1)
    second = await append(store, 5, 2)
    clock.now += timedelta(minutes=2)  # next UTC day
    third = await append(store, 5, 3)
    assert device_days(log_root, 5) == ["2026-03-01", "2026-03-02"]
    day1 = lines_of(log_path(log_root, 5, "2026-03-01"))
    day2 = lines_of(log_path(log_root, 5, "2026-03-02"))
    assert [decode_line(line)[1] for line in day1] == [ZERO_HASH, line_hash(day1[0])]
    assert decode_line(day2[0])[1] == line_hash(day1[1])
    assert (first.offset, second.offset, third.offset) == (0, len(day1[0]) + 1, 0)
    assert third.prev == second.hash == line_hash(day1[1])


async def test_concurrent_appends_share_flushes(store, log_root):
    results = await asyncio.gather(*(append(store, 1 + i % 10, i) for i in range(400)))
    assert len({r.event.id for r in results}) == 400
    assert sum(lines for lines, _, _ in store.flushes) == 400
    assert len(store.flushes) < 100  # many appends per flush
    assert verify(log_root).ok


async def test_durable_end_follows_appends(store):
    appended = await append(store, 9)
    assert store.durable_end(9) == (appended.day, appended.end)


async def test_a_failed_write_acknowledges_nothing_and_leaves_no_trace(store, log_root, monkeypatch):
    await append(store, 3, 1)
    before = log_path(log_root, 3, "2026-03-01").read_bytes()

    def broken(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(LogUnavailable, match="No space left"):
        await append(store, 3, 2)
    monkeypatch.undo()
    assert log_path(log_root, 3, "2026-03-01").read_bytes() == before
    await append(store, 3, 3)
    assert verify(log_root).ok


async def test_heads_are_picked_up_after_a_restart(log_root, clock):
    store = LogStore(log_root, clock=clock)
    await store.open()
    await append(store, 4, 1)
    await store.close()
    again = LogStore(log_root, clock=clock)
    await again.open()
    await append(again, 4, 2)
    await again.close()
    assert verify(log_root).ok
    assert len(lines_of(log_path(log_root, 4, "2026-03-01"))) == 2


async def test_torn_tail_is_quarantined_at_start(log_root, clock):
    store = LogStore(log_root, clock=clock)
    await store.open()
    await append(store, 8, 1)
    await append(store, 8, 2)
    await store.close()
    path = log_path(log_root, 8, "2026-03-01")
    good = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"v":1,"id":"0193-torn')
    store = LogStore(log_root, clock=clock)
    repairs = await store.open()
    assert [r.path for r in repairs] == [path]
    assert path.read_bytes() == good
    assert quarantine_path(path).read_bytes() == b'{"v":1,"id":"0193-torn\n'
    await append(store, 8, 3)  # the chain goes on from the last good line
    await store.close()
    assert verify(log_root).ok


async def test_a_torn_tail_longer_than_the_read_window_is_quarantined_whole(log_root, clock, monkeypatch):
    import eventlog.recovery as recovery

    store = LogStore(log_root, clock=clock)
    await store.open()
    for value in range(1, 4):
        await append(store, 8, value)
    await store.close()
    path = log_path(log_root, 8, "2026-03-01")
    good = path.read_bytes()
    torn = b'{"v":1,"id":"0193-torn' + b"x" * 700 + b"\n" + b"garbage without end"
    with open(path, "ab") as handle:
        handle.write(torn)
    window = recovery._tail.__defaults__  # read the tail in 64-byte steps: the window has to grow
    monkeypatch.setattr(recovery._tail, "__defaults__", (64,))
    [repair] = repair_all(log_root)
    monkeypatch.setattr(recovery._tail, "__defaults__", window)
    assert path.read_bytes() == good and repair.kept_bytes == len(good)
    assert quarantine_path(path).read_bytes() == torn + b"\n"


def test_unparseable_complete_last_line_is_torn_too(log_root):
    path = log_path(log_root, 2, "2026-03-01")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x00\x00\n")
    assert len(repair_all(log_root)) == 1 and path.read_bytes() == b""


async def _sample_log(log_root, clock, lines=5):
    store = LogStore(log_root, clock=clock)
    await store.open()
    for i in range(lines):
        await append(store, 6, i)
    await store.close()
    return log_path(log_root, 6, "2026-03-01")


async def test_verify_names_an_edited_middle_line(log_root, clock):
    path = await _sample_log(log_root, clock)
    data = path.read_bytes().splitlines(keepends=True)
    data[2] = data[2].replace(b'"n":2', b'"n":7')
    path.write_bytes(b"".join(data))
    report = verify(log_root)
    assert not report.ok and report.failure.startswith(f"{path}:4:")  # line 4's prev no longer matches


async def test_verify_catches_a_cut_off_tail_with_the_recorded_hash(log_root, clock):
    path = await _sample_log(log_root, clock)
    lines = lines_of(path)
    recorded = {(6, "2026-03-01"): RecordedFile(len(lines), line_hash(lines[-1]))}
    assert verify(log_root, recorded).ok
    path.write_bytes(b"".join(line + b"\n" for line in lines[:-2]))
    assert verify(log_root).ok  # the chain alone cannot see it
    report = verify(log_root, recorded)
    assert not report.ok and "cut off" in report.failure


async def test_verify_catches_a_changed_last_line(log_root, clock):
    path = await _sample_log(log_root, clock)
    lines = lines_of(path)
    recorded = {(6, "2026-03-01"): RecordedFile(len(lines), line_hash(lines[-1]))}
    doc = orjson.loads(lines[-1])
    doc["body"]["n"] = 99
    lines[-1] = orjson.dumps(doc)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    report = verify(log_root, recorded)
    assert not report.ok and f"{path}:{len(lines)}" in report.failure


async def test_verify_reports_one_changed_byte(log_root, clock):
    path = await _sample_log(log_root, clock, lines=1)
    data = bytearray(path.read_bytes())
    recorded = {(6, "2026-03-01"): RecordedFile(1, line_hash(bytes(data[:-1])))}
    data[data.index(b'"n":0') + 4] = ord("1")
    path.write_bytes(bytes(data))
    assert not verify(log_root, recorded).ok


async def test_one_flush_across_midnight_for_the_same_device(log_root, clock):
    store = LogStore(log_root, clock=clock)
    await store.open()
    await append(store, 12, 0)  # the 2026-03-01 file is open
    events = [store.new_event(PUSH, 12, 385, {"n": i}) for i in range(1, 4)]
    clock.now += timedelta(minutes=2)
    events += [store.new_event(PUSH, 12, 385, {"n": i}) for i in range(4, 8)]
    await asyncio.gather(*(store.append(e) for e in events))  # one flush, both days' files
    await append(store, 12, 8)
    await store.close()
    assert device_days(log_root, 12) == ["2026-03-01", "2026-03-02"]
    assert [len(lines_of(log_path(log_root, 12, d))) for d in ("2026-03-01", "2026-03-02")] == [4, 5]
    assert verify(log_root).ok


async def test_more_files_in_one_flush_than_may_stay_open(log_root, clock):
    store = LogStore(log_root, clock=clock, max_open_files=4)
    await store.open()
    await asyncio.gather(*(append(store, 100 + i, i) for i in range(20)))
    await asyncio.gather(*(append(store, 100 + i, i + 20) for i in range(20)))
    await store.close()
    assert all(len(lines_of(log_path(log_root, 100 + i, "2026-03-01"))) == 2 for i in range(20))
    assert verify(log_root).ok


async def test_cluster_nodes_share_a_root_and_append_only_what_their_fence_allows(log_root, clock):
    """Two stores with a fence (cluster nodes) on one root: each appends only the devices its fence lets it;
    a device handed from one to the other continues its chain; a store without a fence cannot join."""
    mine: dict[str, set[int]] = {"a": {2}, "b": {1}}
    a = LogStore(log_root, clock=clock, fence=lambda d: None if d in mine["a"] else "not mine")
    b = LogStore(log_root, clock=clock, fence=lambda d: None if d in mine["b"] else "not mine")
    await a.open()
    await b.open()
    with pytest.raises(LogLocked):
        await LogStore(log_root, clock=clock).open()
    await append(b, 1, 0)
    await append(a, 2, 0)
    with pytest.raises(LogUnavailable, match="device 2 not appended: not mine"):
        await append(b, 2, 1)
    assert len(lines_of(log_path(log_root, 2, "2026-03-01"))) == 1
    mine["a"], mine["b"] = {1, 2}, set()  # device 1 moves to a, then back to b, which forgets its old head
    appended = await append(a, 1, 1)
    assert b.durable_end(1) == a.durable_end(1) == (appended.day, appended.end)  # b: the files as they stand
    mine["a"], mine["b"] = {2}, {1}
    b.forget({1})
    await append(b, 1, 2)
    await a.close()
    await b.close()
    assert [orjson.loads(line)["body"]["n"] for line in lines_of(log_path(log_root, 1, "2026-03-01"))] == [0, 1, 2]
    assert verify(log_root).ok
    single = LogStore(log_root, clock=clock)
    await single.open()  # once no cluster node holds the root
    await single.close()
