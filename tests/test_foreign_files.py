"""Unit: files in a device folder that are not its log (the original service's pipe-delimited
sync logs, stray files) are moved aside to `.foreign` at start-up, named, and never read as log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from eventlog.events import PUSH, ZERO_HASH, Event, decode_line, encode_line, line_hash
from eventlog.files import device_days, first_line, log_path, side_files
from eventlog.foreign import LEGACY_PIPE_LINE, describe_line, foreign_reason
from eventlog.recovery import FOREIGN, TORN, foreign_path, quarantine_path, repair_all
from eventlog.retention import expired_files
from eventlog.store import LogStore
from eventlog.verify import verify
from projections.db import connect
from projections.replay import replay_logs
from tests.conftest import fixture_bytes

BAD_EVENT = dict(v=1, id="x", type="push", receivedAt="not a time", deviceId=1, userId=2, prev="", body={})
LEGACY = (
    b"2024-05-01 10:00:00 | device=5001 | sensors=3 | 1:12.5 | 2:13.0 | 3:11.8\n"
    b"2024-05-01 10:05:00 | device=5001 | sensors=3 | 1:12.6 | 2:13.1 | 3:11.9\n"
)


def chain(device_id: int, count: int, prev: str = ZERO_HASH, hour: int = 12) -> list[bytes]:
    lines = []
    for i in range(count):
        moment = datetime(2026, 3, 1, hour, 0, i, tzinfo=UTC)
        line = encode_line(Event(f"0195-{device_id}-{hour}-{i}", PUSH, moment, device_id, 385, {"n": i}), prev)
        lines.append(line)
        prev = line_hash(line)
    return lines


def joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def put(root: Path, device_id: int, day: str, data: bytes) -> Path:
    path = log_path(root, device_id, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ describe_line


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (LEGACY.splitlines()[0], LEGACY_PIPE_LINE),
        (b"2024-05-01 10:00:00|5001|1:12.5|2:13.0", LEGACY_PIPE_LINE),
        (b"", "an empty line"),
        (b"   ", "a line of blanks"),
        (b"\x00" * 40, "40 NUL bytes"),
        (b'{"v":1,"id":"01\x00\x00', "NUL bytes"),
        (b"\xff\xfe\x81binary", "binary data, not UTF-8 text"),
        (b"hello world", "text that is not JSON"),
        (b'{"v":1,"id":"0193-cut', "JSON that is cut short or malformed"),
        (b'{"a": "x | y"', "JSON that is cut short or malformed"),  # a pipe inside JSON is not the old format
        (b"[1, 2, 3]", "JSON that is not an object (an array)"),
        (b'"text"', "JSON that is not an object (a string)"),
        (b'{"deviceId": 5001, "value": 12.5}', "not an event of this service (no id, type, receivedAt, userId"),
        (orjson.dumps(BAD_EVENT), "a JSON object that is not a valid event"),
        (chain(7, 1)[0], "a valid event line of device 7"),
    ],
)
def test_describe_line_says_what_a_line_looks_like(raw, expected):
    assert expected in describe_line(raw)


def test_describe_line_quotes_a_short_preview_and_stays_one_line():
    text = describe_line(b"2024-05-01 10:00:00 | device=5001 | " + b"1:12.5 | " * 50 + b"\r")
    assert "'2024-05-01 10:00:00 | device=5001 | 1:12.5" in text and text.endswith("...'")
    assert "\n" not in text and "\r" not in text and len(text) < 250


def test_foreign_reason_leaves_torn_garbage_and_our_own_lines_alone():
    ours = chain(5, 1)[0]
    assert foreign_reason(ours, 5) is None
    assert foreign_reason(b"\x00" * 100, 5) is None  # a zeroed block is torn, not foreign
    assert foreign_reason(ours[:20], 5, terminated=False) is None  # our line cut short
    assert foreign_reason(b"{", 5, terminated=False) is None
    assert foreign_reason(ours[:30] + b"\x00" * 50 + ours[80:], 5) is None  # zeros inside our first line
    assert foreign_reason(b"\x00" * 10 + b"tail", 5, terminated=False) is None
    assert "NUL bytes" in (foreign_reason(b"GIF89a\x00\x00", 5) or "")
    assert foreign_reason(ours, 6) == "its first line is an event of device 5, not of device 6"
    assert LEGACY_PIPE_LINE in (foreign_reason(LEGACY.splitlines()[0], 5) or "")
    assert "no complete line" in (foreign_reason(b"2024-05-01 | 5001", 5, terminated=False) or "")


# ------------------------------------------------------------------ start-up


def test_the_original_service_logs_folder_is_moved_aside_without_a_torn_file(log_root):
    """Same folder and file names as ours, pipe-delimited lines: every such file is foreign."""
    old = [put(log_root, 5001, day, LEGACY) for day in ("2024-04-30", "2024-05-01", "2024-05-02")]
    other = put(log_root, 5002, "2024-05-02", LEGACY[:-1])  # its newest file, without a last newline
    ours = put(log_root, 7, "2026-03-01", joined(chain(7, 3)))
    repairs = repair_all(log_root)
    assert [(r.kind, r.path) for r in repairs] == [(FOREIGN, p) for p in [*old, other]]
    for repair in repairs:
        assert repair.quarantine == repair.path.with_name(repair.path.name + ".foreign")
        assert repair.quarantine.read_bytes() in (LEGACY, LEGACY[:-1]) and not repair.path.exists()
        assert LEGACY_PIPE_LINE in repair.reason and repair.kept_bytes == 0
        assert str(repair.path) in repair.message and LEGACY_PIPE_LINE in repair.message
        assert repair.moved_bytes == repair.quarantine.stat().st_size
    assert not list(log_root.rglob("*.torn"))
    assert device_days(log_root, 5001) == [] and device_days(log_root, 5002) == []
    assert ours.read_bytes() == joined(chain(7, 3))
    assert repair_all(log_root) == []  # nothing more to do the second time
    report = verify(log_root)
    assert report.ok and report.files == 1
    assert sum(".foreign: a foreign file" in n and LEGACY_PIPE_LINE in n for n in report.notes) == 4


def test_an_older_foreign_file_is_moved_and_the_chain_spans_it(log_root):
    first = chain(8, 3, hour=10)
    last = chain(8, 2, prev=line_hash(first[-1]), hour=11)  # written after the foreign file was set aside
    day1 = put(log_root, 8, "2026-02-27", joined(first))
    stray = put(log_root, 8, "2026-02-28", LEGACY)
    day3 = put(log_root, 8, "2026-03-01", joined(last))
    neighbour = put(log_root, 9, "2026-03-01", joined(chain(9, 2)))
    before = snapshot(log_root)
    [repair] = repair_all(log_root)
    assert (repair.kind, repair.path) == (FOREIGN, stray)
    after = snapshot(log_root)
    assert after.pop("8/device8-2026-02-28.log.foreign") == before.pop("8/device8-2026-02-28.log") == LEGACY
    assert after == before  # the device's real files and every other device untouched
    assert day1.exists() and day3.exists() and neighbour.exists()
    report = verify(log_root)
    assert report.ok, report.failure
    assert report.notes == [
        f"{stray.with_name(stray.name + '.foreign')}: a foreign file ({len(LEGACY)} bytes) start-up"
        f" moved aside from {stray.name}; not part of the log: it begins with {describe_line(LEGACY.splitlines()[0])}"
    ]


async def test_a_newest_foreign_file_lets_the_chain_go_on_from_the_previous_real_file(log_root):
    lines = chain(4, 3)
    put(log_root, 4, "2026-02-28", joined(lines))
    stray = put(log_root, 4, "2026-03-01", LEGACY)
    store = LogStore(log_root, clock=lambda: datetime(2026, 3, 1, 13, 0, tzinfo=UTC))
    [repair] = await store.open()
    assert repair.kind == FOREIGN and store.repairs == [repair]
    appended = await store.append(store.new_event(PUSH, 4, 385, {"n": 9}))
    await store.close()
    assert appended.prev == line_hash(lines[-1])
    assert decode_line(stray.read_bytes().splitlines()[0])[1] == line_hash(lines[-1])  # a fresh file of ours
    assert foreign_path(stray).name == stray.name + ".foreign.2"  # the first name is taken now
    assert verify(log_root).ok


async def test_a_device_with_only_foreign_files_starts_a_fresh_chain(log_root):
    put(log_root, 5001, "2024-05-01", LEGACY)
    store = LogStore(log_root, clock=lambda: datetime(2026, 3, 1, 13, 0, tzinfo=UTC))
    await store.open()
    appended = await store.append(store.new_event(PUSH, 5001, 385, {"n": 1}))
    await store.close()
    assert appended.prev == ZERO_HASH and appended.day == "2026-03-01"
    assert device_days(log_root, 5001) == ["2026-03-01"]
    assert verify(log_root).ok


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"deviceId": 3, "sensors": [1, 2]}\n', "a JSON object that is not an event of this service"),
        (b"PK\x03\x04\xff\xfe zipped\n", "binary data"),
        (b"PK\x03\x04\x00\x00\x08\x00 zipped\n", "NUL bytes"),  # NUL bytes, but not where a crash leaves them
        (b"\n" + LEGACY, "an empty line"),
        (b"just some notes, no newline at all", "no complete line"),
        (joined(chain(5, 2)), "an event of device 5, not of device 3"),
    ],
)
def test_stray_files_are_foreign_too(log_root, data, reason):
    path = put(log_root, 3, "2026-03-01", data)
    [repair] = repair_all(log_root)
    assert (repair.kind, repair.path) == (FOREIGN, path) and reason in repair.reason
    assert foreign_path(path).name == path.name + ".foreign.2" and not path.exists()


@pytest.mark.parametrize(
    "data",
    [
        b'{"v":1,"id":"0195-torn',  # our first line cut short: torn, not foreign
        b"\x00" * 512 + b"\n",  # a zeroed block
        joined(chain(3, 2)) + b"\x00" * 64,
    ],
)
def test_torn_garbage_is_not_foreign(log_root, data):
    path = put(log_root, 3, "2026-03-01", data)
    [repair] = repair_all(log_root)
    assert repair.kind == TORN and quarantine_path(path).exists() and path.exists()
    assert not list(log_root.rglob("*.foreign"))


def test_set_aside_files_are_never_listed_as_log(log_root):
    put(log_root, 5001, "2024-05-01", LEGACY)
    put(log_root, 5001, "2024-05-02", joined(chain(5001, 1)) + b"torn")
    repair_all(log_root)
    folder = log_root / "5001"
    assert sorted(p.name for p in folder.iterdir()) == [
        "device5001-2024-05-01.log.foreign", "device5001-2024-05-02.log", "device5001-2024-05-02.log.torn",
    ]  # fmt: skip
    assert device_days(log_root, 5001) == ["2024-05-02"]
    assert [p.name for p in side_files(log_root, 5001)] == [
        "device5001-2024-05-01.log.foreign", "device5001-2024-05-02.log.torn",
    ]  # fmt: skip
    assert [e.path.name for e in expired_files(log_root, "2030-01-01")] == ["device5001-2024-05-02.log"]


def test_first_line_reads_only_up_to_the_first_newline(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one\ntwo\n")
    assert first_line(path) == (b"one", True)
    path.write_bytes(b"x" * 20_000)
    assert first_line(path) == (b"x" * 20_000, False)
    assert first_line(path, limit=100) == (b"x" * 100, False)
    path.write_bytes(b"")
    assert first_line(path) is None


# ------------------------------------------------------------------ verify before start-up


def test_verify_names_a_foreign_file_not_yet_moved(log_root):
    path = put(log_root, 5001, "2024-05-01", LEGACY)
    report = verify(log_root)
    assert report.failure == (
        f"{path}:1: not a valid event line: {describe_line(LEGACY.splitlines()[0])};"
        f" this is not a log of this service: start-up moves it aside to {path.name}.foreign"
    )


def test_verify_names_file_and_line_of_a_bad_line_in_the_middle(log_root):
    lines = chain(2, 5)
    lines[2] = LEGACY.splitlines()[0]
    path = put(log_root, 2, "2026-03-01", joined(lines))
    report = verify(log_root)
    assert report.failure is not None and report.failure.startswith(f"{path}:3: not a valid event line: ")
    assert LEGACY_PIPE_LINE in report.failure and "moves it aside" not in report.failure
    assert repair_all(log_root) == []  # not a torn tail (lines after it are fine): start-up leaves it


# ------------------------------------------------------------------ the service


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_service_starts_on_the_original_logs_folder_and_says_what_it_moved(app_client, log_root, caplog):
    stray = put(log_root, 5001, "2024-05-01", LEGACY)
    with caplog.at_level(logging.WARNING, logger="tlink.app"):
        client = await app_client()
    [record] = [r for r in caplog.records if r.name == "tlink.app"]
    assert str(stray) in record.getMessage() and LEGACY_PIPE_LINE in record.getMessage()
    body = {**orjson.loads(fixture_bytes("sample_push.json")), "deviceId": 5001}
    resp = await client.post("/api/webhooks/tlink", data=orjson.dumps(body))
    assert resp.status == 200, await resp.text()
    assert device_days(log_root, 5001) != [] and stray.with_name(stray.name + ".foreign").exists()
    assert verify(log_root).ok


async def test_replay_sets_foreign_files_aside_and_applies_every_device(log_root, sqlite_url):
    sample = orjson.loads(fixture_bytes("sample_push.json"))
    store = LogStore(log_root, clock=lambda: datetime(2026, 3, 1, 13, 0, tzinfo=UTC))
    await store.open()
    for device_id in (5001, 5002):
        await store.append(store.new_event(PUSH, device_id, 385, {**sample, "deviceId": device_id}))
    await store.close()
    older = put(log_root, 5001, "2024-05-01", LEGACY)  # before the device's real file
    db = await connect(sqlite_url)
    try:
        await replay_logs(db, log_root)  # the older foreign file stopped neither device
        assert await db.fetchall("SELECT device_id FROM events ORDER BY device_id") == [(5001,), (5002,)]
    finally:
        await db.close()
    assert not older.exists() and older.with_name(older.name + ".foreign").read_bytes() == LEGACY
