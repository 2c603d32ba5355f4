"""Backup benchmark: time the restore runbook (backup, restore, replay, verify, audit) on the replay benchmark's log.

    .venv/bin/python -m ops.bench_backup [--devices 1000] [--pushes 100] [--log-dir DIR [--regenerate]]
        [--backends sqlite,mysql] [--mysql-server URL]

Generates (or reuses, with --log-dir) the log of ops/bench_replay.py (1,000 devices x 100
pushes by default), then runs each step of docs/backup.md as a `tlink-push` process and
times it: `backup DEST` into an empty folder, `backup DEST` again (incremental, nothing
changed), `python3 -I -S ops/audit.py DEST` (a bare interpreter), `restore DEST` into an
empty log root, then per backend `replay` into a fresh database (created and dropped here)
and `verify` against it. Prints the figures and saves them as JSON under ops/results/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ops.bench_common import DEFAULT_MYSQL_SERVER, PROJECT, bench_database, machine_busy, save_results, table
from ops.bench_replay import add_log_arguments, prepare_log, replay, run_tlink, tlink_env

AUDIT = PROJECT / "ops" / "audit.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the log options are bench_replay's)."""
    parser = argparse.ArgumentParser(prog="python -m ops.bench_backup", description=__doc__.split("\n\n")[0])
    add_log_arguments(parser)
    parser.add_argument("--backends", default="sqlite,mysql", help="databases to replay into (default sqlite,mysql)")
    parser.add_argument("--mysql-server", default=DEFAULT_MYSQL_SERVER, help="where the fresh bench database goes")
    return parser.parse_args(argv)


def step(name: str, args: list[str], root: Path, workdir: Path, database_url: str | None = None) -> dict[str, Any]:
    """One timed `tlink-push` run that must succeed; its seconds and last output line."""
    env = tlink_env(database_url or f"sqlite:///{workdir / 'unused.db'}", root)
    status, output, seconds, usage = run_tlink(args, env, workdir, name)
    if status != 0:
        raise SystemExit(f"tlink-push {' '.join(args)} failed ({status}):\n{output[-3000:]}")
    last = output.strip().splitlines()[-1] if output.strip() else ""
    print(f"{name}: {seconds:.2f} s: {last}", flush=True)
    return {"seconds": seconds, "peak_rss_kb": usage.ru_maxrss, "output": output.strip()}


def audit(folder: Path) -> dict[str, Any]:
    """`python3 -I -S ops/audit.py DEST`, timed."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-I", "-S", str(AUDIT), str(folder)], capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"ops/audit.py failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    last = done.stdout.strip().splitlines()[-1]
    print(f"audit: {seconds:.2f} s: {last}", flush=True)
    return {"seconds": seconds, "output": last}


def main(argv: list[str] | None = None) -> int:
    """Run every step of the runbook, print and save the figures."""
    args = parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "mysql"}:
        print("--backends takes sqlite, mysql or both", file=sys.stderr)
        return 2
    busy = machine_busy()
    if busy > 0.15:
        print(f"WARNING: other processes use {busy:.0%} of a core before the start: expect skewed figures")
    workdir = Path(tempfile.mkdtemp(prefix="tlink-bench-backup-"))
    try:
        root, log_info = prepare_log(args, workdir)
        dest, new_root = workdir / "backup", workdir / "new-machine" / "logs"
        steps = {
            "backup": step("backup", ["backup", str(dest)], root, workdir),
            "backup again": step("backup again", ["backup", str(dest)], root, workdir),
            "audit": audit(dest),
            "restore": step("restore", ["restore", str(dest)], new_root, workdir),
        }
        for backend in backends:
            sqlite_dir = workdir if backend == "sqlite" else None
            with bench_database(None, args.mysql_server, sqlite_dir) as database_url:
                result = replay(database_url, new_root, workdir)
                print(f"replay ({backend}): {result['wall_s']:.2f} s: {result['output'].splitlines()[-1]}", flush=True)
                steps[f"replay ({backend})"] = {"seconds": result["wall_s"], "events": result["events"],
                                                "peak_rss_kb": result["peak_rss_kb"]}  # fmt: skip
                steps[f"verify ({backend})"] = step(f"verify ({backend})", ["verify"], new_root, workdir, database_url)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nthe restore runbook on {log_info['lines']:,} lines ({log_info['bytes'] / 2**20:,.0f} MB)")
    print(table(["step", "seconds"], [[name, f"{found['seconds']:.2f}"] for name, found in steps.items()]))
    for backend in backends:
        total = sum(steps[s]["seconds"] for s in ("backup", "restore", f"replay ({backend})", f"verify ({backend})"))
        print(f"backup + restore + replay + verify ({backend}): {total:.1f} s")
    if args.log_dir:
        print(f"log kept in {root} (reuse with --log-dir {root})")
    data = {"log": log_info, "steps": steps, "settings": {k: str(v) for k, v in vars(args).items()},
            "busy_before_cores": busy}  # fmt: skip
    path = save_results("backup", data)
    print(f"saved {path.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
