"""Subcommands for the background jobs (prune, sync), registered with service.cli."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from eventlog.store import LogLocked
from projections.db import Database
from projections.retention import PruneReport, prune_logs
from projections.schema import apply_schema
from service.cli.main import command, with_db
from service.config import Settings
from service.http.app import create_app, storage_ctx
from service.http.keys import DATABASE, INGESTOR
from service.jobs.sync import SyncReport, SyncStats, build_sync

# ---------------------------------------------------------------- prune


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list the files due for deletion, change nothing")
    parser.epilog = (
        "Deletes daily files of days before today (UTC) minus LOG_AGE days: device logs"
        " <root>/<id>/device<id>-YYYY-MM-DD.log (after recording each one's last-line hash in log_files as"
        " pruned) and <root>/sync-failures/sync-failures-YYYY-MM-DD.log, then device folders left empty."
        " Exit status 1 when a due file had to be kept."
    )


@command("prune", "apply log retention now: delete daily files older than LOG_AGE days", _prune_arguments)
def prune_command(args: argparse.Namespace, settings: Settings) -> int:
    async def work(db: Database) -> PruneReport:
        if settings.AUTO_APPLY_SCHEMA and not args.dry_run:
            await apply_schema(db)
        return await prune_logs(db, settings.SYNC_LOG_DIR, settings.LOG_AGE, dry_run=args.dry_run)

    report: PruneReport = with_db(settings, work)
    if args.dry_run:
        for path in report.deleted:
            print(f"would delete {path}")
        print(f"{len(report.deleted)} files due (days before {report.cutoff}); nothing changed")
        return 0
    for path in report.deleted:
        print(f"deleted {path}")
    for folder in report.folders:
        print(f"removed empty folder {folder}")
    for path, reason in report.skipped:
        print(f"kept {path}: {reason}")
    if report.db_error is not None:
        print(f"kept {report.waiting} device files: database unreachable ({report.db_error})")
    kept = report.kept
    print(
        f"pruned {len(report.deleted)} files ({report.lines} log lines) of days before {report.cutoff},"
        f" removed {len(report.folders)} folders, kept {kept} due files"
    )
    return 1 if kept else 0


# ---------------------------------------------------------------- sync


def _sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="run one sync now and exit (required)")
    parser.add_argument("--user", type=int, action="append", metavar="ID", help="sync this TLINK user id "
                        "instead of TLINK_SYNC_USER_IDS (repeatable)")  # fmt: skip
    parser.epilog = (
        "The scheduled sync runs inside `tlink-push serve` every TLINK_SYNC_INTERVAL_SECONDS when"
        " TLINK_SYNC_ENABLED=true; this command only runs one sync by hand, hence --once. It appends to the"
        " log files, so it refuses to run while the service holds the log root. Exit status 0 when nothing"
        " failed, 1 when a user or page failed, 2 when the sync is not configured."
    )


@command("sync", "run one TLINK cloud sync by hand (--once) and print what it did", _sync_arguments)
def sync_command(args: argparse.Namespace, settings: Settings) -> int:
    if not args.once:
        print("tlink-push sync: pass --once (the scheduled sync runs inside `tlink-push serve`)", file=sys.stderr)
        return 2
    problem = _sync_problem(settings, args.user)
    if problem is not None:
        print(f"tlink-push sync: {problem}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_sync_once(settings, args.user))
    except LogLocked as exc:
        print(f"tlink-push sync: {exc}; the service syncs by itself (or stop it)", file=sys.stderr)
        return 1
    _print_report(report)
    return 0 if report.failures == 0 else 1


def _sync_problem(settings: Settings, users: list[int] | None) -> str | None:
    if users is not None and any(user <= 0 for user in users):
        return "--user must be a positive TLINK user id"
    return settings.sync_problem(users)


@asynccontextmanager
async def service_storage(settings: Settings) -> AsyncIterator[web.Application]:
    """The service's storage (database, log store, projector, ingestor), opened and closed as the server does."""
    app = create_app(settings)
    ctx = storage_ctx(app)
    await anext(ctx)
    try:
        yield app
    finally:
        await anext(ctx, None)


async def _sync_once(settings: Settings, users: list[int] | None) -> SyncReport:
    async with service_storage(settings) as app, aiohttp.ClientSession() as session:
        sync = build_sync(settings, session, app[INGESTOR], app[DATABASE], SyncStats())
        return await sync.run(users)


def _print_report(report: SyncReport) -> None:
    for user in report.users:
        print(
            f"user {user.user_id}: pages={user.pages} devices={user.devices} unchanged={user.unchanged}"
            f" readings={user.readings} failures={user.failures}"
        )
        for error in user.errors:
            print(f"  failed: {error}")
    print(
        f"TLINK sync completed users={len(report.users)} devices={report.devices} unchanged={report.unchanged}"
        f" readings={report.readings} failures={report.failures} seconds={report.seconds:.3f}"
        f" outcome={report.outcome}"
    )
