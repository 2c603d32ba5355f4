"""`tlink-push`: the one command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from eventlog.events import EventLogError
from eventlog.verify import RecordedFile, verify
from projections.db import Database, DatabaseError, DatabaseMissing, connect
from projections.errors import ProjectionError
from projections.projector import DeviceStop
from projections.rebuild import rebuild
from projections.replay import recorded_files, replay_logs
from service.config import Settings, SettingsError, load_settings

log = logging.getLogger("tlink.cli")

Command = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, tuple[str, Command, Callable[[argparse.ArgumentParser], None]]] = {}


def command(
    name: str, summary: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
) -> Callable[[Command], Command]:
    """Register a subcommand: `summary` is its --help line, `arguments` adds its options."""

    def register(func: Command) -> Command:
        COMMANDS[name] = (summary, func, arguments)
        return func

    return register


class Progress:
    """A one-line counter on a terminal (silent when output is not a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def __call__(self, count: int) -> None:
        if self.enabled:
            rate = count / max(time.monotonic() - self.started, 1e-9)
            sys.stderr.write(f"\r{self.label}: {count:,} ({rate:,.0f}/s)")
            sys.stderr.flush()

    def done(self) -> None:
        """End the progress line."""
        if self.enabled:
            sys.stderr.write("\n")


def with_db(settings: Settings, work: Callable[[Database], Coroutine[Any, Any, Any]]) -> Any:
    """Run `work` with a database connection, closed afterwards."""

    async def run() -> Any:
        db = await connect(settings.DATABASE_URL)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


# ---------------------------------------------------------------- serve


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: HOST setting)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT setting)")


@command("serve", "run the HTTP service", _serve_arguments)
def serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.http.server import run_server

    return run_server(settings, host=args.host, port=args.port)


# ---------------------------------------------------------------- replay


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes applying the log, each taking a share of the devices"
        " (default: the number of cores, at most 2, for MySQL; 1 for SQLite)",
    )  # fmt: skip


@command(
    "replay", "drop and rebuild the events table and read models from the log files (service stopped)",
    _replay_arguments,
)  # fmt: skip
def replay(args: argparse.Namespace, settings: Settings) -> int:
    workers = args.workers
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if settings.DATABASE_URL.startswith("mysql") else 1
    if workers < 1:
        print("tlink-push replay: --workers must be at least 1", file=sys.stderr)
        return 2
    url = settings.DATABASE_URL
    return int(with_db(settings, lambda db: _replay(db, settings.SYNC_LOG_DIR, url, workers)))


async def _replay(db: Database, root: Path, url: str, workers: int) -> int:
    progress = Progress("replay: events")
    started = time.monotonic()
    report = await replay_logs(db, root, progress, url, workers)
    progress.done()
    for repair in report.repairs:
        print(repair.message, file=sys.stderr)
    elapsed = time.monotonic() - started
    count = report.events
    print(f"replayed {count} events in {elapsed:.1f} s ({count / max(elapsed, 1e-9):,.0f} events/s)")
    return _print_stops(report.stopped, root)


def _print_stops(stopped: list[DeviceStop], root: Path) -> int:
    """Name each device whose projection stopped, on stderr; the exit status (1 if any)."""
    for stop in stopped:
        print(f"device {stop.device_id} stopped at {stop.describe(root)}", file=sys.stderr)
    if stopped:
        print(f"{len(stopped)} device(s) not applied past the line named; every other device is", file=sys.stderr)
    return 1 if stopped else 0


# ---------------------------------------------------------------- rebuild


@command("rebuild", "rebuild the read models into new tables from the log and switch over while the service runs")
def rebuild_command(args: argparse.Namespace, settings: Settings) -> int:
    async def work(db: Database) -> int:
        progress = Progress("rebuild: events")
        report = await rebuild(db, settings.SYNC_LOG_DIR, progress)
        progress.done()
        print(
            f"rebuilt read models: {report.first_pass} events, {report.catch_up} caught up before"
            f" and {report.after_switch} after the switch"
        )
        return _print_stops(report.stopped, settings.SYNC_LOG_DIR)

    return int(with_db(settings, work))


# ---------------------------------------------------------------- verify


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-db", action="store_true", help="check the hash chains only, not the hashes recorded in the database"
    )


@command("verify", "check every hash chain and the last-line hashes recorded in the database", _verify_arguments)
def verify_command(args: argparse.Namespace, settings: Settings) -> int:
    recorded = {} if args.no_db else asyncio.run(_recorded_files(settings.DATABASE_URL))
    progress = Progress("verify: lines")
    report = verify(settings.SYNC_LOG_DIR, recorded, progress)
    progress.done()
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        print(f"FAILED: {report.failure}")
        return 1
    if report.files == 0:
        print(f"FAILED: nothing to verify: no log files in {settings.SYNC_LOG_DIR.absolute()} (SYNC_LOG_DIR)")
        return 1
    print(f"OK: {report.files} files, {report.lines} lines, every hash chain intact")
    return 0


async def _recorded_files(url: str) -> dict[tuple[int, str], RecordedFile] | None:
    """What the database recorded, opened without creating anything; None (noted) when there is none."""
    db = await connect(url, create=False)
    try:
        await db.ping()
        recorded = await recorded_files(db)
    except DatabaseMissing as exc:
        print(f"note: {exc}: checking the hash chains only")
        return None
    finally:
        await db.close()
    if recorded is None:
        print("note: the database holds no tables of this service: checking the hash chains only")
    return recorded


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The parser of `tlink-push` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="tlink-push",
        description="TLINK push data service. Settings come from the environment and .env (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, _, arguments) in COMMANDS.items():
        arguments(sub.add_parser(name, help=summary, description=summary))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tlink-push` console script."""
    import service.cli.commands  # noqa: F401  (registers prune and sync)

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tlink-push: {exc}", file=sys.stderr)
        return 2
    from service.logs import setup_logging

    setup_logging(settings.LOG_FORMAT, settings.LOG_LEVEL, settings.ACCESS_LOG)
    _, func, _ = COMMANDS[args.command]
    try:
        return func(args, settings)
    except DatabaseError as exc:
        print(f"tlink-push {args.command}: database error: {exc}", file=sys.stderr)
        return 1
    except (EventLogError, ProjectionError) as exc:
        print(f"tlink-push {args.command}: {exc}", file=sys.stderr)
        return 1

