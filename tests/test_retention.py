"""Log retention: which files go, the database marks that keep `verify` whole, the job and `tlink-push prune`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from eventlog.events import PUSH, SYNC, ZERO_HASH, decode_line, line_hash
from eventlog.files import device_days, device_ids, log_path
from eventlog.retention import (
    cutoff_day,
    delete_files,
    expired_files,
    remove_empty_device_dirs,
    summarize,
    sync_failures_path,
)
from eventlog.store import LogStore
from eventlog.verify import verify
from projections.db import Database, DatabaseUnavailable, Row, connect
from projections.replay import recorded_files, replay_logs
from projections.retention import prune_logs
from service.cli.main import main
from service.http.keys import RETENTION_JOB, RETENTION_STATS, SCHEDULER, SERVICES
from service.jobs.scheduler import RETENTION_FIRST_RUN_SECONDS, RETENTION_JOB_ID

TODAY = date(2026, 1, 10)
LOG_AGE = 3  # cutoff 2026-01-07: files of 01-06 and before are due


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def write_log(root: Path, plan: dict[int, Sequence[str]], lines: int = 3) -> None:
    """Hash-chained lines for each device on each day, written by the real store."""
    clock = Clock()
    store = LogStore(root, clock=clock)
    await store.open()
    try:
        for day in sorted({d for days in plan.values() for d in days}):
            clock.now = datetime.fromisoformat(f"{day}T12:00:00+00:00")
            for device_id, days in plan.items():
                if day in days:
                    for n in range(lines):
                        await store.append(store.new_event(SYNC, device_id, 385, {"id": device_id, "n": n}))
    finally:
        await store.close()


def touch(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Database]:
    db = await connect(url)
    try:
        yield db
    finally:
        await db.close()


async def rows(db: Database) -> dict[tuple[int, str], tuple[int, str, int]]:
    found = await db.fetchall("SELECT device_id, log_day, line_count, last_hash, pruned FROM log_files")
    return {(int(r[0]), str(r[1])): (int(r[2]), str(r[3]), int(r[4])) for r in found}


# --------------------------------------------------------------------------- the rule, files only


def test_cutoff_is_today_minus_log_age_days():
    assert cutoff_day(TODAY, LOG_AGE) == "2026-01-07"
    assert cutoff_day(date(2026, 3, 1), 1) == "2026-02-28"


def test_only_daily_files_before_the_cutoff_are_due(tmp_path):
    root = tmp_path / "logs"
    due = [touch(log_path(root, 7, "2026-01-05")), touch(log_path(root, 7, "2026-01-06"))]
    kept = [
        touch(log_path(root, 7, "2026-01-07")),  # the cutoff day itself stays
        touch(log_path(root, 7, "2026-01-10")),
        touch(root / "7" / "device7-2026-01-05.log.torn"),  # quarantine: never touched
        touch(root / "7" / "device8-2026-01-05.log"),  # another device's name in this folder
        touch(root / "7" / "device7-2026-13-45.log"),  # not a date
        touch(root / "7" / "notes.txt"),
        touch(root / "rejected" / "rejected-2026-01-01.log"),
        touch(root / "backup" / "device7-2026-01-01.log"),
        touch(root / "sync-failures" / "sync-failures-2026-01-07.log"),
        touch(root / "sync-failures" / "other-2026-01-01.log"),
    ]
    failures = touch(sync_failures_path(root, "2026-01-02"))

    expired = expired_files(root, cutoff_day(TODAY, LOG_AGE))

    assert [(f.path, f.day, f.device_id) for f in expired] == [
        (due[0], "2026-01-05", 7), (due[1], "2026-01-06", 7), (failures, "2026-01-02", None),
    ]  # fmt: skip
    assert all(path.exists() for path in kept)


def test_deleting_removes_the_files_then_only_empty_device_folders(tmp_path):
    root = tmp_path / "logs"
    files = [touch(log_path(root, 7, "2026-01-01")), touch(log_path(root, 8, "2026-01-01"))]
    torn = touch(root / "8" / "device8-2026-01-01.log.torn")
    touch(log_path(root, 9, "2026-01-09"))

    assert delete_files([*files, root / "7" / "gone.log"]) == files
    assert remove_empty_device_dirs(root, [7, 8, 9]) == [root / "7"]
    assert device_ids(root) == [8, 9] and torn.exists()


async def test_summary_counts_lines_and_hashes_the_last(tmp_path):
    root = tmp_path / "logs"
    await write_log(root, {7: ["2026-01-01"]}, lines=4)
    path = log_path(root, 7, "2026-01-01")
    raw = path.read_bytes().splitlines()

    summary = summarize(path, check_line=2)

    assert (summary.line_count, summary.byte_count) == (4, path.stat().st_size)
    assert summary.last_hash == line_hash(raw[-1]) and summary.hash_at == line_hash(raw[1])


# --------------------------------------------------------------------------- with the database


async def prepared(root: Path, db: Database) -> None:
    """Devices 7 (old and new days), 8 (old day not in the database) and 9 (old days only), projected."""
    await write_log(
        root, {7: ["2026-01-05", "2026-01-06", "2026-01-07", "2026-01-09"], 8: ["2026-01-02", "2026-01-08"],
               9: ["2026-01-03", "2026-01-04"]},
    )  # fmt: skip
    await replay_logs(db, root)
    async with db.transaction() as cur:  # as if the database had never seen device 8's old file
        await cur.execute("DELETE FROM log_files WHERE device_id = %s AND log_day = %s", [8, "2026-01-02"])


async def test_prune_marks_rows_deletes_files_and_verify_still_passes(database_url, tmp_path):
    root = tmp_path / "logs"
    async with database(database_url) as db:
        await prepared(root, db)
        old8 = summarize(log_path(root, 8, "2026-01-02"))
        old9 = summarize(log_path(root, 9, "2026-01-04"))

        report = await prune_logs(db, root, LOG_AGE, today=TODAY)

        due = [(7, "2026-01-05"), (7, "2026-01-06"), (8, "2026-01-02"), (9, "2026-01-03"), (9, "2026-01-04")]
        assert sorted(report.deleted) == sorted(log_path(root, d, day) for d, day in due)
        assert report.folders == [root / "9"] and report.skipped == [] and report.lines == 15
        assert device_days(root, 7) == ["2026-01-07", "2026-01-09"] and device_days(root, 8) == ["2026-01-08"]
        assert device_ids(root) == [7, 8]
        marks = await rows(db)
        assert marks[(8, "2026-01-02")] == (3, old8.last_hash, 1)  # inserted
        assert marks[(9, "2026-01-04")] == (3, old9.last_hash, 1)  # updated
        assert [marks[(7, day)][2] for day in ("2026-01-05", "2026-01-06", "2026-01-07", "2026-01-09")] == [1, 1, 0, 0]

        recorded = await recorded_files(db)
        result = verify(root, recorded)
        assert result.ok, result.failure
        assert result.files == 3 and result.lines == 9
        no_db = verify(root, None)
        assert no_db.ok and len(no_db.notes) == 2  # devices 7 and 8 start mid-chain

        again = await prune_logs(db, root, LOG_AGE, today=TODAY)
        assert again.deleted == [] and again.folders == []


async def test_verify_still_catches_what_retention_did_not_do(database_url, tmp_path):
    root = tmp_path / "logs"
    async with database(database_url) as db:
        await prepared(root, db)
        await prune_logs(db, root, LOG_AGE, today=TODAY)
        recorded = await recorded_files(db)

    oldest = log_path(root, 7, "2026-01-07")
    content = oldest.read_bytes()
    oldest.write_bytes(content.replace(b'"n":0', b'"n":5', 1))  # its first line changed: line 2 no longer chains
    assert (verify(root, recorded).failure or "").startswith(f"{oldest}:2: hash chain broken")
    oldest.unlink()  # removed by hand: its row is not marked pruned
    assert verify(root, recorded).failure == f"{oldest}: missing, but the database recorded 3 lines"


async def test_a_device_pruned_away_may_begin_a_new_chain(database_url, tmp_path):
    root = tmp_path / "logs"
    async with database(database_url) as db:
        await prepared(root, db)
        await prune_logs(db, root, LOG_AGE, today=TODAY)
        assert device_days(root, 9) == []
        await write_log(root, {9: ["2026-01-10"]}, lines=2)  # a store started after the folder was removed
        recorded = await recorded_files(db)

    _, prev = decode_line(log_path(root, 9, "2026-01-10").read_bytes().splitlines()[0])
    assert prev == ZERO_HASH
    result = verify(root, recorded)
    assert result.ok and result.notes == []


async def test_a_replay_keeps_the_records_of_pruned_files(database_url, tmp_path):
    root = tmp_path / "logs"
    async with database(database_url) as db:
        await prepared(root, db)
        await prune_logs(db, root, LOG_AGE, today=TODAY)
        before = {k: v for k, v in (await recorded_files(db)).items() if v.pruned}
        await replay_logs(db, root)  # rebuilt from the files, but the pruned files' records stay
        recorded = await recorded_files(db)

    assert before and {k: v for k, v in recorded.items() if v.pruned} == before
    result = verify(root, recorded)
    assert result.ok and result.notes == []


async def test_a_file_that_disagrees_with_the_database_is_kept(database_url, tmp_path):
    root = tmp_path / "logs"
    async with database(database_url) as db:
        await prepared(root, db)
        cut = log_path(root, 7, "2026-01-05")
        cut.write_bytes(b"".join(line + b"\n" for line in cut.read_bytes().splitlines()[:2]))
        changed = log_path(root, 9, "2026-01-04")
        changed.write_bytes(changed.read_bytes().replace(b'"n":2', b'"n":7'))

        report = await prune_logs(db, root, LOG_AGE, today=TODAY)

        assert dict(report.skipped) == {
            cut: "has 2 lines but the database recorded 3; run tlink-push verify",
            changed: "line 3 does not match the hash recorded in the database; run tlink-push verify",
        }
        assert cut.exists() and changed.exists()
        marks = await rows(db)
        assert marks[(7, "2026-01-05")][2] == 0 and marks[(9, "2026-01-04")][2] == 0
        assert marks[(7, "2026-01-06")][2] == 1 and not log_path(root, 7, "2026-01-06").exists()


class UnreachableWrites(Database):
    """Answers reads with nothing and refuses every transaction, like a database that just went down."""

    kind = "sqlite"

    def transaction(self) -> Any:
        raise DatabaseUnavailable("database went away")

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return []

    async def close(self) -> None:
        pass


async def test_nothing_chained_is_deleted_while_the_database_is_unreachable(tmp_path):
    root = tmp_path / "logs"
    await write_log(root, {7: ["2026-01-05", "2026-01-09"]})
    failures = touch(sync_failures_path(root, "2026-01-01"))
    down = await connect(f"mysql://root@127.0.0.1:{unused_port()}/nothing")

    report = await prune_logs(down, root, LOG_AGE, today=TODAY)

    assert report.deleted == [failures] and report.waiting == 1 and "unavailable" in (report.db_error or "")
    assert device_days(root, 7) == ["2026-01-05", "2026-01-09"]

    report = await prune_logs(UnreachableWrites(), root, LOG_AGE, today=TODAY)
    assert report.deleted == [] and report.waiting == 1 and report.db_error == "database went away"
    assert device_days(root, 7) == ["2026-01-05", "2026-01-09"]


# --------------------------------------------------------------------------- the job and the command


def days_ago(n: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=n)).isoformat()


async def test_the_retention_job_is_scheduled_and_applies_the_rule(app_client, database_url, log_root):
    await write_log(log_root, {7: [days_ago(100), days_ago(1)], 8: [days_ago(95)]})
    async with database(database_url) as db:
        await replay_logs(db, log_root)
    before = datetime.now(UTC)

    client = await app_client(LOG_AGE=90)
    app = client.server.app

    job = app[SCHEDULER].get_job(RETENTION_JOB_ID)
    assert job.trigger.interval == timedelta(hours=12) and job.max_instances == 1 and job.coalesce
    assert job.next_run_time >= before + timedelta(seconds=RETENTION_FIRST_RUN_SECONDS)
    report = await app[RETENTION_JOB].run()
    assert report.cutoff == days_ago(90) and len(report.deleted) == 2 and report.folders == [log_root / "8"]
    stats = app[RETENTION_STATS]
    assert (stats.runs, stats.files_deleted, stats.folders_removed, stats.files_kept) == (1, 2, 1, 0)
    assert device_ids(log_root) == [7] and device_days(log_root, 7) == [days_ago(1)]
    assert verify(log_root, await recorded_files(app[SERVICES].db)).ok


@pytest.fixture
def cli_env(monkeypatch, tmp_path, database_url, log_root, restore_logging):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SYNC_LOG_DIR", str(log_root))
    monkeypatch.setenv("LOG_AGE", "90")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")


def test_prune_from_the_command_line(cli_env, log_root, capsys):
    asyncio.run(write_log(log_root, {7: [days_ago(91), days_ago(90)], 8: [days_ago(120)]}))
    old7, old8 = log_path(log_root, 7, days_ago(91)), log_path(log_root, 8, days_ago(120))

    assert main(["replay"]) == 0
    assert main(["prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would delete {old7}" in out and f"would delete {old8}" in out and "nothing changed" in out
    assert old7.exists() and old8.exists()

    assert main(["prune"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {old7}\n" in out and f"deleted {old8}\n" in out
    assert f"removed empty folder {log_root / '8'}" in out
    assert "pruned 2 files (6 log lines)" in out and "kept 0 due files" in out
    assert device_ids(log_root) == [7] and device_days(log_root, 7) == [days_ago(90)]

    assert main(["verify"]) == 0
    assert "OK: 1 files, 3 lines" in capsys.readouterr().out
    assert main(["verify", "--no-db"]) == 0
    assert "begins mid-chain" in capsys.readouterr().out


def test_prune_help_states_the_rule(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    assert "LOG_AGE" in capsys.readouterr().out


async def pushes_on(root: Path, plan: list[tuple[str, int, int, str]]) -> None:
    """(receipt day, device, sensor, value) pushes, each a reading at noon of its receipt day."""
    clock = Clock()
    store = LogStore(root, clock=clock)
    await store.open()
    try:
        for day, device_id, sensor_id, value in plan:
            clock.now = datetime.fromisoformat(f"{day}T12:00:00+00:00")
            body = {"deviceId": device_id, "deviceUserid": 385, "time": f"{day} 12:00:00",
                    "sensorsDates": [{"sensorsId": sensor_id, "value": value, "times": "12:00:00"}]}  # fmt: skip
            await store.append(store.new_event(PUSH, device_id, 385, body))
    finally:
        await store.close()


READ_MODELS = {
    "devices": "SELECT device_id, last_flag, last_push_time FROM devices ORDER BY 1",
    "sensors": "SELECT device_id, sensor_id, latest_value, latest_recorded_at FROM sensors ORDER BY 1, 2",
    "readings": "SELECT device_id, sensor_id, recorded_at, value FROM sensor_readings ORDER BY 1, 2, 3",
    "users": "SELECT tlink_user_id, parent_user_id FROM users ORDER BY 1",
    "events": "SELECT event_id FROM events ORDER BY 1",
}


async def read_models(db: Database) -> dict[str, list[Row]]:
    return {name: list(await db.fetchall(sql)) for name, sql in READ_MODELS.items()}


async def test_after_retention_the_read_models_are_a_replay_of_the_remaining_files(database_url, tmp_path):
    root = tmp_path / "logs"
    await pushes_on(root, [
        ("2026-01-05", 1, 11, "old only"),  # sensor 11: all its readings pruned
        ("2026-01-05", 1, 12, "old"),
        ("2026-01-05", 2, 21, "device 2 pruned away"),  # device 2: every file pruned
        ("2026-01-09", 1, 12, "kept"),
    ])  # fmt: skip
    async with database(database_url) as db:
        await replay_logs(db, root)
        assert len((await read_models(db))["readings"]) == 4
        report = await prune_logs(db, root, LOG_AGE, today=TODAY)
        assert len(report.deleted) == 2 and report.rebuilt is not None
        after = await read_models(db)
        assert [tuple(r[:2]) for r in after["sensors"]] == [(1, 12)]  # sensor 11 and device 2 are gone
        assert [r[3] for r in after["readings"]] == ["kept"]
        assert [int(r[0]) for r in after["devices"]] == [1]
        await replay_logs(db, root)
        assert await read_models(db) == after  # what a replay of the remaining files gives
