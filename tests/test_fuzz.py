"""A bounded run of ops/fuzz.py: schemathesis (both API_KEYS modes) and the webhook fuzzer find nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ops.fuzz import NotStrictJson, readme_problem, same_value, strict_loads

PROJECT = Path(__file__).resolve().parent.parent


def test_strict_loads_refuses_what_cannot_be_kept_as_sent():
    for raw in (b'{"a":1,"a":2}', b'{"a":NaN}', b"\xef\xbb\xbf{}", b'{"a":"\xff"}', b'{"a":"\\ud800"}', b"{},"):
        with pytest.raises(NotStrictJson):
            strict_loads(raw)
    assert strict_loads(b'{"a":0.1000000000000000000001,"b":18446744073709551616}') == {
        "a": Decimal("0.1000000000000000000001"), "b": 2**64,
    }  # fmt: skip


def test_same_value_compares_numbers_exactly():
    assert same_value({"a": [1, Decimal("1.10")]}, {"a": [1, Decimal("1.1")]}) is None
    assert same_value({"a": 2**64}, {"a": Decimal("1.8446744073709552E+19")}) is not None
    assert same_value({"a": Decimal("0.1000000000000000000001")}, {"a": Decimal("0.1")}) is not None
    assert same_value({"a": 1}, {"a": Decimal("1.0")}) is not None
    assert same_value({"a": True}, {"a": 1}) is not None
    assert same_value({"a": 1, "b": 2}, {"a": 1}) is not None


def test_readme_problem_follows_the_limits_table():
    body = json.loads((PROJECT / "tests" / "fixtures" / "sample_push.json").read_text())
    assert readme_problem(body) is None
    assert readme_problem({**body, "deviceId": "２８６４"}) is not None
    assert readme_problem({**body, "deviceId": 2**63}) is not None
    assert readme_problem({**body, "time": "2019-05-10 14:16"}) is not None
    assert readme_problem({**body, "flag": "x" * 17}) is not None


def fuzz(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "ops.fuzz", "--seed", "7", "--out", str(out), *options],
        cwd=PROJECT, env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    files = list(out.glob("fuzz-*.json"))
    report = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert len(files) == 1, report
    result: dict[str, Any] = json.loads(files[0].read_text())
    assert done.returncode == (0 if result["ok"] else 1), report
    failures = {"webhook": result.get("webhook", {}).get("failures")}
    for run in result.get("schemathesis", []):
        failures[run["mode"]] = run["failures_by_check"] or run["errors"] or run["reproductions"][:3000]
    return result, report + json.dumps(failures, indent=1, ensure_ascii=False)[:20_000]


@pytest.mark.slow
def test_webhook_fuzz_finds_nothing(tmp_path):
    result, report = fuzz(tmp_path, "--webhook-cases", "300", "--schemathesis-cases", "0")
    web = result["webhook"]
    assert web["cases"] == 300, report
    assert sum(web["outcomes"].values()) == 300, report
    assert web["outcomes"].get("200 stored", 0) > 0 and web["outcomes"].get("400", 0) > 0, report
    assert web["outcomes"].get("401", 0) > 0, report
    assert web["verify_exit"] == 0, report
    assert web["log_lines"] == web["accepted_events"], report
    assert web["failure_counts"] == {} and web["failed"] == 0, report
    assert not any(status.startswith("5") for status in web["statuses"]), report


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path):
    result, report = fuzz(tmp_path, "--webhook-cases", "0", "--schemathesis-cases", "10")
    runs = {run["mode"]: run for run in result["schemathesis"]}
    assert set(runs) == {"open", "api_keys"}, report
    for run in runs.values():
        assert run["seeded_push_status"] == 200, report
        # Every operation the configuration selects (all but the live stream: ops/schemathesis.toml).
        assert run["operations"]["tested"] == run["operations"]["selected"] == run["operations"]["total"] - 1, report
        assert run["test_cases"]["generated"] > 0, report
        assert run["failures_by_check"] == {} and run["errors"] == [], report
        assert run["failed"] == 0 and run["exit"] == 0, report
    assert result["ok"], report
