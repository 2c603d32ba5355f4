"""Short runs of ops/crash_cycles.py: kill -9 under concurrent load, restart, and nothing lost or doubled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent


def crash_cycles(tmp_path: Path, *options: str) -> dict[str, Any]:
    """Run the script for 3 cycles; the JSON result it wrote, checked against its exit status."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "ops.crash_cycles", "--cycles", "3", "--max-load", "1.0", "--seed", "7",
         "--out", str(out), *options],
        cwd=PROJECT, env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    report = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    files = list(out.glob("crash_cycles-*.json"))
    assert len(files) == 1, report
    result: dict[str, Any] = json.loads(files[0].read_text())
    assert done.returncode == (0 if result["ok"] else 1), report
    return result | {"report": report}


def assert_nothing_lost_or_doubled(result: dict[str, Any]) -> None:
    report = result["report"]
    assert result["cycles_done"] == 3 and result["service_kills"] == 3, report
    assert result["acknowledged"] > 100, report
    assert result["lost_pushes"] == 0 and result["lost"] == {}, report
    assert result["duplicated_total"] == 0, report
    assert result["lines_not_in_events"] == 0 and result["events_not_in_files"] == 0, report
    assert result["reading_rows"] == result["expected_reading_rows"], report
    assert result["torn_unreported"] == [], report
    assert result["verify_exit"] == 0, report
    assert result["problems"] == [] and result["ok"], report


@pytest.mark.slow
def test_crash_cycles_sqlite(tmp_path):
    result = crash_cycles(tmp_path, "--sqlite")
    assert result["mode"] == "sqlite"
    assert_nothing_lost_or_doubled(result)


@pytest.mark.slow
@pytest.mark.mysql
def test_crash_cycles_mariadb(tmp_path):
    result = crash_cycles(tmp_path)
    assert result["mode"] == "mariadb"
    assert_nothing_lost_or_doubled(result)
