"""ops/audit.py, run by a bare interpreter, agrees with `tlink-push verify --no-db` and `tlink-push restore`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventlog.backup import MANIFEST, PREVIOUS_MANIFEST, backup
from eventlog.deadletter import DeadLetters
from eventlog.events import BACKFILL, PUSH, SYNC
from eventlog.files import log_path
from eventlog.store import LogStore
from tests.conftest import Clock, run_cli

AUDIT = Path(__file__).resolve().parent.parent / "ops" / "audit.py"
DAY1, DAY2 = "2026-03-01", "2026-03-02"


def audit(folder: Path, cwd: Path) -> tuple[int, str]:
    """`python3 -I -S ops/audit.py DIR`: no site-packages, no environment, no project on the path."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(AUDIT), str(folder)], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


async def verify_no_db(root: Path, cwd: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SYNC_LOG_DIR"))}
    env.update(DATABASE_URL=f"sqlite:///{cwd}/unused.db", SYNC_LOG_DIR=str(root), LOG_LEVEL="WARNING")
    status, out, err = await run_cli(env, cwd, "verify", "--no-db")
    return status, out + err


@pytest.fixture
async def log(log_root: Path) -> Path:
    """A log written by the log store: three devices over two days, every event type with a body, a dead letter."""
    clock = Clock(datetime(2026, 3, 1, 23, 58, 0, tzinfo=UTC))
    store = LogStore(log_root, clock=clock)
    await store.open()
    try:
        for n in range(12):
            if n == 6:
                clock.now += timedelta(minutes=5)  # the next UTC day
            device = 5 + n % 3
            await store.append(store.new_event(PUSH, device, 385, {"n": n, "deviceId": device, "text": "é ✓"}))
        await store.append(store.new_event(SYNC, 5, 385, {"id": 5, "sensorsList": []}))
        request = {"sensorId": 51, "startDate": "2026-03-01 00:00:00", "endDate": "2026-03-02 00:00:00",
                   "pagingState": None, "pageSize": 100}  # fmt: skip
        await store.append(store.new_event(BACKFILL, 6, 385, {"flag": "00", "dataList": []}, request))
    finally:
        await store.close()
    await DeadLetters(log_root).keep(b"{not json", "invalid JSON", "127.0.0.1")
    return log_root


def test_the_audit_uses_the_standard_library_only():
    tree = ast.parse(AUDIT.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {"__future__"}


async def test_both_accept_a_good_log_and_a_good_backup(log, tmp_path):
    status, out = audit(log, tmp_path)
    assert status == 0, out
    assert "OK: 3 devices, 7 files, 14 lines, every hash chain intact" in out  # 6 device files + 1 dead-letter file
    status, out = await verify_no_db(log, tmp_path)
    assert status == 0 and "OK: 6 files, 14 lines" in out

    backup(log, tmp_path / "backup")
    status, out = audit(tmp_path / "backup", tmp_path)
    assert status == 0, out
    assert "note: backup made " in out and "by tlink-push " in out and ": 7 files" in out


def tamper(root: Path, case: str) -> None:
    """Spoil a log one way (device 5 has 2 lines on day 1, 3 on day 2)."""
    path = log_path(root, 5, DAY1)
    lines = path.read_bytes().split(b"\n")[:-1]
    if case == "tampered line":
        lines[0] = lines[0].replace(b'"n":0', b'"n":8')  # still a valid event line, same length
    elif case == "broken chain":
        del lines[1]  # a line removed: the next day's first line names it as its prev
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
        return
    elif case == "not an event":
        lines[1] = b'{"v":1,"hello":"world"}'
    elif case == "wrong device":
        os.replace(log_path(root, 6, DAY1), path)  # device 6's file in device 5's folder
        return
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.mark.parametrize("case", ["tampered line", "broken chain", "truncated", "not an event", "wrong device"])
async def test_both_reject_a_spoiled_log(log, tmp_path, case):
    tamper(log, case)

    status, out = audit(log, tmp_path)
    verify_status, verify_out = await verify_no_db(log, tmp_path)

    assert status == 1 and "FAILED: 5/device5-" in out, out
    assert verify_status == 1 and "FAILED: " in verify_out, verify_out
    assert "OK:" not in out


async def test_a_tampered_middle_line_is_named_by_both(log, tmp_path):
    tamper(log, "tampered line")
    _, out = audit(log, tmp_path)
    _, verify_out = await verify_no_db(log, tmp_path)
    # The changed line still parses; the line after it names it as the break in the chain.
    assert f"FAILED: 5/device5-{DAY1}.log:2: hash chain broken" in out
    assert f"device5-{DAY1}.log:2: hash chain broken" in verify_out


def spoil_backup(folder: Path, case: str) -> None:
    path = folder / "5" / f"device5-{DAY1}.log"
    if case == "tampered line":
        path.write_bytes(path.read_bytes().replace(b'"n":3', b'"n":8'))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif case == "file missing from the manifest":
        doc = json.loads((folder / MANIFEST).read_bytes())
        doc["files"] = [e for e in doc["files"] if not e["path"].startswith("6/")]
        (folder / MANIFEST).write_text(json.dumps(doc))
    elif case == "listed file missing":
        path.unlink()
    elif case == "unfinished":
        os.replace(folder / MANIFEST, folder / PREVIOUS_MANIFEST)
    else:
        raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["tampered line", "truncated", "file missing from the manifest", "listed file missing", "unfinished"]
)
async def test_audit_and_restore_both_reject_a_spoiled_backup(log, tmp_path, case):
    folder = tmp_path / "backup"
    backup(log, folder)
    spoil_backup(folder, case)

    status, out = audit(folder, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SYNC_LOG_DIR"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path}/unused.db", SYNC_LOG_DIR=str(tmp_path / "new"))
    restore_status, _, err = await run_cli(env, tmp_path, "restore", str(folder))

    assert status == 1 and "FAILED: " in out and "OK:" not in out, out
    assert restore_status == 1 and "tlink-push restore: " in err and "Traceback" not in err
    assert not (tmp_path / "new" / "5").exists()


async def test_side_files_are_notes_for_both(log, tmp_path):
    path = log_path(log, 5, DAY2)
    path.with_name(path.name + ".torn").write_bytes(b'{"half a li')

    status, out = audit(log, tmp_path)
    verify_status, verify_out = await verify_no_db(log, tmp_path)

    assert status == 0 and f"note: 5/device5-{DAY2}.log.torn: a torn file, not part of the log" in out
    assert verify_status == 0 and f"device5-{DAY2}.log.torn" in verify_out


def test_the_audit_of_no_log_or_no_folder_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    assert audit(tmp_path / "empty", tmp_path) == (1, "FAILED: no log files found\n")
    status, out = audit(tmp_path / "nowhere", tmp_path)
    assert status == 2 and "not a folder" in out
