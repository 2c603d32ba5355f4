"""`tlink-push backup` and `restore`: a copy taken while the service runs, checked, restored, replayed, verified."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventlog.backup import MANIFEST, PREVIOUS_MANIFEST, backup, check_backup
from eventlog.files import device_days, log_path
from projections.schema import READ_MODEL_TABLES
from tests.conftest import dump, fixture_bytes, mysql_database_url, run_cli

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))


def push(device_id: int, n: int) -> bytes:
    body = copy.deepcopy(SAMPLE)
    body["deviceId"] = device_id
    body["time"] = f"2019-05-10 14:{n // 60:02d}:{n % 60:02d}"
    for entry in body["sensorsDates"]:
        entry["times"] = body["time"][11:]
        entry["sensorsId"] += 10 * (device_id - 2864)
        entry["value"] = str(n)
    return orjson.dumps(body)


def cli_env(database_url: str, log_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLINK_", "DATABASE_URL", "SYNC_LOG_DIR"))}
    env.update(DATABASE_URL=database_url, SYNC_LOG_DIR=str(log_root), LOG_LEVEL="WARNING")
    return env


@contextlib.contextmanager
def another_database(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second fresh database on the same backend: the new machine's."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/restored.db"
    else:
        yield from mysql_database_url()





def manifest(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / MANIFEST).read_bytes())
    return doc


def entry(folder: Path, relative: str) -> dict[str, Any]:
    [found] = [e for e in manifest(folder)["files"] if e["path"] == relative]
    return found


def write_log(root: Path, device_id: int, day: str, lines: list[bytes], tail: bytes = b"") -> Path:
    """A log file of these exact lines (plus an unfinished tail), as the service appends them."""
    path = log_path(root, device_id, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
    return path


# ---------------------------------------------------------------- the round trip


async def test_backup_while_serving_then_restore_replay_verify_give_the_same_database(
    app_client, database_url, log_root, tmp_path
):
    client = await app_client()
    for n in range(30):
        resp = await client.post("/api/webhooks/tlink", data=push(2864 + n % 3, n))
        assert resp.status == 200
    assert (await client.post("/api/webhooks/tlink", data=b"{not json")).status == 400  # a dead letter
    dest = tmp_path / "backup"

    status, out, err = await run_cli(cli_env(database_url, log_root), tmp_path, "backup", str(dest))  # service runs

    assert status == 0, err
    assert "backed up 4 files" in out and "4 copied, 0 extended, 0 unchanged" in out
    assert sorted(e["path"] for e in manifest(dest)["files"]) == sorted(
        [f"{d}/{log_path(log_root, d, device_days(log_root, d)[0]).name}" for d in (2864, 2865, 2866)]
        + [f"rejected/{next((log_root / 'rejected').iterdir()).name}"]
    )
    live = await dump(database_url, READ_MODEL_TABLES)
    await client.close()

    new_root = tmp_path / "new-machine" / "logs"
    with another_database(database_url, tmp_path) as new_url:
        env = cli_env(new_url, new_root)
        status, out, err = await run_cli(env, tmp_path, "restore", str(dest))
        assert status == 0, err
        assert "restored 4 files" in out and "next: tlink-push replay, then tlink-push verify" in out
        status, out, err = await run_cli(env, tmp_path, "replay")
        assert status == 0, err
        assert "replayed 30 events" in out
        status, out, err = await run_cli(env, tmp_path, "verify")
        assert status == 0, out + err
        assert "OK: 3 files, 30 lines" in out
        assert await dump(new_url, READ_MODEL_TABLES) == live
    assert (new_root / "rejected").is_dir()


async def test_a_backup_taken_while_pushes_keep_coming_is_a_prefix_of_each_file_and_catches_up(
    app_client, log_root, tmp_path, sqlite_url
):
    client = await app_client()
    for n in range(6):
        assert (await client.post("/api/webhooks/tlink", data=push(2864 + n % 3, n))).status == 200
    stop = asyncio.Event()

    async def keep_pushing() -> int:
        n = 6
        while not stop.is_set():
            assert (await client.post("/api/webhooks/tlink", data=push(2864 + n % 3, n % 3600))).status == 200
            n += 1
        return n - 6

    pusher = asyncio.create_task(keep_pushing())
    dest = tmp_path / "backup"
    status, _, err = await run_cli(cli_env(sqlite_url, log_root), tmp_path, "backup", str(dest))
    stop.set()
    pushed_meanwhile = await pusher
    assert status == 0, err
    assert pushed_meanwhile > 0  # the backup process takes far longer than a push

    entries = check_backup(dest)
    for found in entries:
        copy_bytes = (dest / found.path).read_bytes()
        assert (log_root / found.path).read_bytes().startswith(copy_bytes) and copy_bytes.endswith(b"\n")
    status, _, err = await run_cli(cli_env(sqlite_url, log_root), tmp_path, "backup", str(dest))  # all caught up
    assert status == 0, err
    for found in check_backup(dest):
        assert (dest / found.path).read_bytes() == (log_root / found.path).read_bytes()
    assert sum(e.lines for e in check_backup(dest) if not e.path.startswith("rejected")) == 6 + pushed_meanwhile
    await client.close()


# ---------------------------------------------------------------- what is copied


def test_a_line_still_being_written_is_left_out_and_added_by_the_next_backup(log_root, tmp_path):
    lines = [b'{"n":1}', b'{"n":2}']
    path = write_log(log_root, 7, "2026-03-01", lines, tail=b'{"n":3')  # a write in progress
    dest = tmp_path / "backup"

    report = backup(log_root, dest)

    assert (report.copied, report.extended) == (1, 0)
    copied = dest / "7" / path.name
    assert copied.read_bytes() == b'{"n":1}\n{"n":2}\n'
    assert entry(dest, f"7/{path.name}")["lines"] == 2
    with open(path, "ab") as out:
        out.write(b"}\n")  # the write finishes

    report = backup(log_root, dest)

    assert (report.copied, report.extended, report.unchanged) == (0, 1, 0)
    assert copied.read_bytes() == path.read_bytes()
    assert entry(dest, f"7/{path.name}")["lines"] == 3
    assert check_backup(dest)


def test_incremental_backup_copies_only_what_changed_and_keeps_files_retention_deleted(log_root, tmp_path):
    old = write_log(log_root, 7, "2026-03-01", [b'{"n":1}'])
    today = write_log(log_root, 7, "2026-03-02", [b'{"n":2}'])
    torn = old.with_name(old.name + ".torn")
    torn.write_bytes(b'{"n":9')  # a side file: copied as it is, unterminated line and all
    dest = tmp_path / "backup"
    assert backup(log_root, dest).copied == 3
    assert (dest / "7" / torn.name).read_bytes() == b'{"n":9'
    old.unlink()  # retention
    with open(today, "ab") as out:
        out.write(b'{"n":3}\n')
    write_log(log_root, 8, "2026-03-02", [b'{"n":4}'])

    report = backup(log_root, dest)

    assert (report.copied, report.extended, report.unchanged) == (1, 1, 1)
    assert report.kept == [f"7/{old.name}"]
    assert (dest / "7" / old.name).read_bytes() == b'{"n":1}\n'
    assert (dest / "7" / today.name).read_bytes() == b'{"n":2}\n{"n":3}\n'
    assert len(check_backup(dest)) == 4
    assert not (dest / PREVIOUS_MANIFEST).exists()


def test_an_interrupted_backup_has_no_manifest_and_the_next_one_goes_on_from_the_one_before(log_root, tmp_path):
    path = write_log(log_root, 7, "2026-03-01", [b'{"n":1}'])
    dest = tmp_path / "backup"
    backup(log_root, dest)
    with open(path, "ab") as out:
        out.write(b'{"n":2}\n')
    # What a backup killed after moving the manifest aside and copying part of the new bytes leaves:
    os.replace(dest / MANIFEST, dest / PREVIOUS_MANIFEST)
    with open(dest / "7" / path.name, "ab") as out:
        out.write(b'{"n"')

    report = backup(log_root, dest)

    assert report.extended == 1
    assert (dest / "7" / path.name).read_bytes() == path.read_bytes()
    assert check_backup(dest)


async def test_a_log_changed_behind_the_backup_is_refused_and_the_backup_kept(log_root, tmp_path):
    path = write_log(log_root, 7, "2026-03-01", [b'{"n":1}', b'{"n":2}'])
    dest = tmp_path / "backup"
    backup(log_root, dest)
    before = (dest / MANIFEST).read_bytes()
    path.write_bytes(b'{"n":1}\n{"n":5}\n{"n":3}\n')  # line 2 edited, then a line appended

    status, _, err = await run_cli(cli_env("sqlite:///unused.db", log_root), tmp_path, "backup", str(dest))

    assert status == 1
    assert f"{path}: the backup in {dest} holds 16 bytes of it ending in another line" in err
    assert "Traceback" not in err
    assert (dest / PREVIOUS_MANIFEST).read_bytes() == before  # the next run still knows the good backup
    assert (dest / "7" / path.name).read_bytes() == b'{"n":1}\n{"n":2}\n'


@pytest.mark.parametrize("case", ["not empty", "a file", "inside the log root", "unwritable"])
async def test_backup_into_a_folder_it_cannot_use_is_refused_clearly(log_root, tmp_path, case):
    write_log(log_root, 7, "2026-03-01", [b'{"n":1}'])
    dest = tmp_path / "dest"
    if case == "not empty":
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")
        message = "not empty and holds no backup (MANIFEST.json)"
    elif case == "a file":
        dest.write_text("mine")
        message = "cannot write the backup there"
    elif case == "inside the log root":
        dest = log_root / "backup"
        message = "a backup must be outside the log root"
    else:
        dest = Path("/proc/tlink-backup")
        message = "cannot write the backup there"

    status, _, err = await run_cli(cli_env("sqlite:///unused.db", log_root), tmp_path, "backup", str(dest))

    assert status == 1 and message in err and "Traceback" not in err
    if case == "not empty":
        assert os.listdir(dest) == ["notes.txt"]
    assert not (log_root / "backup").exists()


# ---------------------------------------------------------------- restore


@pytest.fixture
def good_backup(log_root, tmp_path) -> Path:
    write_log(log_root, 7, "2026-03-01", [b'{"n":1}', b'{"n":2}'])
    write_log(log_root, 8, "2026-03-01", [b'{"n":3}'])
    dest = tmp_path / "backup"
    backup(log_root, dest)
    return dest


def damage(folder: Path, case: str) -> str:
    """Spoil a backup one way; the message restore must give."""
    one = folder / "7" / "device7-2026-03-01.log"
    if case == "no manifest":
        (folder / MANIFEST).unlink()
        return "no manifest: not a backup, or a backup that did not finish"
    if case == "unfinished":
        os.replace(folder / MANIFEST, folder / PREVIOUS_MANIFEST)
        return "no manifest"
    if case == "manifest not JSON":
        (folder / MANIFEST).write_text("{")
        return "the manifest is not JSON"
    if case == "changed byte":
        one.write_bytes(b'{"n":1}\n{"n":9}\n')
        return f"{one}: its lines are not those the manifest names"
    if case == "changed middle line":
        one.write_bytes(b'{"n":7}\n{"n":2}\n')
        return f"{one}: its bytes differ from the backup's"
    if case == "truncated":
        one.write_bytes(b'{"n":1}\n{"n"')
        return f"{one}: 12 bytes, the manifest says 16 (truncated)"
    if case == "missing file":
        one.unlink()
        return f"{one}: named in the manifest but missing"
    if case == "unlisted file":
        (folder / "9").mkdir()
        (folder / "9" / "device9-2026-03-01.log").write_bytes(b'{"n":4}\n')
        return "device9-2026-03-01.log: in the backup but not named in its manifest"
    raise AssertionError(case)


DAMAGES = [
    "no manifest", "unfinished", "manifest not JSON", "changed byte", "changed middle line", "truncated",
    "missing file", "unlisted file",
]  # fmt: skip


@pytest.mark.parametrize("case", DAMAGES)
async def test_restore_refuses_a_backup_that_does_not_match_its_manifest(good_backup, tmp_path, case):
    message = damage(good_backup, case)
    root = tmp_path / "new-logs"

    status, out, err = await run_cli(cli_env("sqlite:///unused.db", root), tmp_path, "restore", str(good_backup))

    assert status == 1, out
    assert message in err and "Traceback" not in err
    assert not [p for p in root.rglob("*") if p.is_file()]


async def test_restore_refuses_a_log_root_that_holds_files_and_a_missing_backup(good_backup, log_root, tmp_path):
    env = cli_env("sqlite:///unused.db", log_root)
    status, _, err = await run_cli(env, tmp_path, "restore", str(good_backup))
    assert status == 1 and "already holds files; restore only into an empty one" in err

    empty = tmp_path / "empty-logs"
    (empty / "rejected").mkdir(parents=True)  # folders without files count as empty
    env = cli_env("sqlite:///unused.db", empty)
    status, _, err = await run_cli(env, tmp_path, "restore", str(tmp_path / "nowhere"))
    assert status == 1 and "nowhere: no such folder" in err and "Traceback" not in err
    status, _, err = await run_cli(env, tmp_path, "restore", str(good_backup))
    assert status == 0, err
    assert (empty / "7" / "device7-2026-03-01.log").read_bytes() == b'{"n":1}\n{"n":2}\n'


async def test_restore_refuses_while_a_service_holds_the_log_root(app_client, database_url, log_root, tmp_path):
    write_log(tmp_path / "old", 7, "2026-03-01", [b'{"n":1}'])
    backup(tmp_path / "old", tmp_path / "backup")
    client = await app_client()  # the service holds the (empty) log root

    status, _, err = await run_cli(cli_env(database_url, log_root), tmp_path, "restore", str(tmp_path / "backup"))

    assert status == 1 and "another process (a running service?) is writing to the log root" in err
    assert not (log_root / "7").exists()
    await client.close()
