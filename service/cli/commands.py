"""The subcommands of `tlink-push`, each a function of (arguments, settings) returning the exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from eventlog.backup import BackupError, backup, restore
from eventlog.events import utc_now
from eventlog.store import LogLocked, lock_root
from eventlog.verify import RecordedFile, verify
from projections.coverage import SensorCoverage, day_coverage
from projections.db import DatabaseMissing
from projections.log_lines import DeviceStop
from projections.rebuild import rebuild
from projections.replay import recorded_files, replay_logs
from projections.retention import PruneReport, prune_logs
from projections.schema import apply_schema
from projections.views import owned_devices, sensors_of
from service.bootstrap import open_database, open_services
from service.config import Settings
from service.http.server import run_server
from service.jobs.backfill import BackfillReport
from service.jobs.sync import SyncReport
from service.legacy import IMPORTED_DIR, ImportInterrupted, ImportReport, LegacyError, describe_source, import_legacy


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


# ---------------------------------------------------------------- serve


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: HOST setting)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT setting)")
    parser.add_argument(
        "--role", choices=["all", "ingest", "writer"],
        help="cluster mode (BUS_URL): receive pushes (ingest), write the partitions this node holds (writer),"
        " or both (all; default: NODE_ROLE setting)",
    )  # fmt: skip


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP service until SIGTERM/SIGINT."""
    if args.role is not None:
        settings = settings.model_copy(update={"NODE_ROLE": args.role})
    return run_server(settings, host=args.host, port=args.port)


# ---------------------------------------------------------------- replay


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes applying the log, each taking a share of the devices"
        " (default: the number of cores, at most 2, for MySQL; 1 for SQLite)",
    )  # fmt: skip


def replay(args: argparse.Namespace, settings: Settings) -> int:
    workers = args.workers
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if settings.database.kind == "mysql" else 1
    if workers < 1:
        print("tlink-push replay: --workers must be at least 1", file=sys.stderr)
        return 2
    return asyncio.run(_replay(settings, workers))


async def _replay(settings: Settings, workers: int) -> int:
    root = settings.SYNC_LOG_DIR
    progress = Progress("replay: events")
    started = time.monotonic()
    async with open_database(settings) as db:
        report = await replay_logs(db, root, progress, settings.database, workers)
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


def rebuild_command(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild the read models into new tables while the service runs."""
    return asyncio.run(_rebuild(settings))


async def _rebuild(settings: Settings) -> int:
    progress = Progress("rebuild: events")
    async with open_database(settings) as db:
        report = await rebuild(db, settings.SYNC_LOG_DIR, progress)
    progress.done()
    print(
        f"rebuilt read models: {report.first_pass} events, {report.catch_up} caught up before"
        f" and {report.after_switch} after the switch"
    )
    return _print_stops(report.stopped, settings.SYNC_LOG_DIR)


# ---------------------------------------------------------------- verify


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-db", action="store_true", help="check the hash chains only, not the hashes recorded in the database"
    )


def verify_command(args: argparse.Namespace, settings: Settings) -> int:
    """Check the hash chains (and the database's record of them); read-only."""
    recorded = {} if args.no_db else asyncio.run(_recorded_files(settings))
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


async def _recorded_files(settings: Settings) -> dict[tuple[int, str], RecordedFile] | None:
    """What the database recorded, opened without creating anything; None (noted) when there is none."""
    try:
        async with open_database(settings, create=False) as db:
            await db.ping()
            recorded = await recorded_files(db)
    except DatabaseMissing as exc:
        print(f"note: {exc}: checking the hash chains only")
        return None
    if recorded is None:
        print("note: the database holds no tables of this service: checking the hash chains only")
    return recorded


# ---------------------------------------------------------------- backup and restore


def _backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", type=Path, metavar="DEST", help="the backup folder: new, empty, or holding a backup")
    parser.epilog = (
        "Copies every file under SYNC_LOG_DIR into DEST while the service runs (it takes no lock): each *.log"
        " file up to its last complete line as of the moment it is read, every other file as it is, each"
        " fsynced; then writes DEST/MANIFEST.json (each file's size, line count, last line's hash and SHA-256)"
        " last and atomically. Into a folder holding a backup it is incremental: only what changed is copied."
        " The database is not backed up: `tlink-push replay` rebuilds it. See docs/backup.md."
    )


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    """Copy the log root into a backup folder, with its manifest."""
    progress = Progress("backup: files")
    started = time.monotonic()
    try:
        report = backup(settings.SYNC_LOG_DIR, args.dest, progress)
    except BackupError as exc:
        print(f"tlink-push backup: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.done()
    for relative in report.kept:
        print(f"kept {relative}: no longer in the log root")
    print(
        f"backed up {len(report.files)} files ({report.size:,} bytes) into {args.dest} in"
        f" {time.monotonic() - started:.1f} s: {report.copied} copied, {report.extended} extended,"
        f" {report.unchanged} unchanged, {report.bytes_copied:,} bytes written"
    )
    return 0


def _restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="SRC", help="a folder written by `tlink-push backup`")
    parser.epilog = (
        "Checks every file of SRC against SRC/MANIFEST.json (size, line count, last line's hash, SHA-256; no"
        " file missing or unlisted), then copies it into SYNC_LOG_DIR, which must hold no file (run it with the"
        " service stopped: it takes the log root's writer lock). Then run `tlink-push replay` and"
        " `tlink-push verify`, and start the service. Exit status 1 when the backup does not match its manifest"
        " or the log root is not empty; nothing is copied then."
    )


def restore_command(args: argparse.Namespace, settings: Settings) -> int:
    """Check a backup and copy it into an empty log root."""
    root = settings.SYNC_LOG_DIR
    progress = Progress("restore: files checked")
    try:
        lock = lock_root(root)
    except LogLocked as exc:
        print(f"tlink-push restore: {exc}; stop the service first", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tlink-push restore: {root}: cannot use it as the log root: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        entries = restore(args.source, root, progress)
    except BackupError as exc:
        progress.done()
        print(f"tlink-push restore: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(lock)
    progress.done()
    size = sum(entry.size for entry in entries)
    print(f"restored {len(entries)} files ({size:,} bytes) from {args.source} into {root}, each checked")
    print("next: tlink-push replay, then tlink-push verify, then start the service")
    return 0


# ---------------------------------------------------------------- prune


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list the files due for deletion, change nothing")
    parser.epilog = (
        "Deletes daily files of days before today (UTC) minus LOG_AGE days: device logs"
        " <root>/<id>/device<id>-YYYY-MM-DD.log (after recording each one's last-line hash in log_files as"
        " pruned) and <root>/sync-failures/sync-failures-YYYY-MM-DD.log, then device folders left empty."
        " Exit status 1 when a due file had to be kept."
    )


def prune_command(args: argparse.Namespace, settings: Settings) -> int:
    """Apply log retention now (or, with --dry-run, list what it would delete)."""
    report = asyncio.run(_prune(settings, args.dry_run))
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


async def _prune(settings: Settings, dry_run: bool) -> PruneReport:
    async with open_database(settings) as db:
        if settings.AUTO_APPLY_SCHEMA and not dry_run:
            await apply_schema(db)
        return await prune_logs(db, settings.SYNC_LOG_DIR, settings.LOG_AGE, dry_run=dry_run)


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


def sync_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one TLINK sync by hand."""
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


async def _sync_once(settings: Settings, users: list[int] | None) -> SyncReport:
    async with open_services(settings) as services:
        return await services.sync.run(users)


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


# ---------------------------------------------------------------- backfill


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _user_and_device(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--user", type=int, action="append", metavar="ID",
        help=f"{what} this TLINK user's devices instead of TLINK_SYNC_USER_IDS' (repeatable)",
    )  # fmt: skip
    parser.add_argument("--device", type=int, metavar="ID", help=f"{what} only this device")


def _backfill_arguments(parser: argparse.ArgumentParser) -> None:
    _user_and_device(parser, "backfill")
    parser.add_argument(
        "--since", type=_day, metavar="YYYY-MM-DD",
        help="look for gaps from this day on (platform time) instead of BACKFILL_LOOKBACK_DAYS back",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the gaps and make no call")
    parser.epilog = (
        "Finds each sensor's gaps in the read models and asks TLINK's getSensorHistroy for exactly each gap,"
        " within BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY calls per sensor per UTC day (counted from the log)."
        " The scheduled job runs inside `tlink-push serve` when BACKFILL_ENABLED=true; this command appends to"
        " the log files, so it refuses to run while the service holds the log root. Exit status 0 when no call"
        " failed, 1 when the vendor refused or did not answer a call, 2 when the sync is not configured."
    )


def backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    """Find gaps and fill them from the vendor's sensor history, once."""
    problem = _sync_problem(settings, args.user)
    if problem is not None:
        print(f"tlink-push backfill: {problem}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_backfill_once(settings, args))
    except LogLocked as exc:
        print(f"tlink-push backfill: {exc}; the service backfills by itself (BACKFILL_ENABLED), or stop it",
              file=sys.stderr)  # fmt: skip
        return 1
    for found in report.gaps:
        gap = found.gap
        print(
            f"device {found.device_id} sensor {gap.sensor_id}: gap {gap.start:%Y-%m-%d %H:%M:%S} to"
            f" {gap.end:%Y-%m-%d %H:%M:%S} (about {gap.missing} missing, cadence {gap.cadence:g} s):"
            f" {found.outcome}, {found.calls} calls, {found.recovered} readings recovered"
        )
    print(
        f"TLINK backfill completed devices={report.devices} gaps={len(report.gaps)} calls={report.calls}"
        f" recovered={report.recovered} open={report.open_gaps} failures={report.failures}"
        f" seconds={report.seconds:.3f} outcome={report.outcome}"
    )
    return 0 if report.failures == 0 else 1


async def _backfill_once(settings: Settings, args: argparse.Namespace) -> BackfillReport:
    async with open_services(settings) as services:
        return await services.backfill.run(args.user, args.device, args.since, args.dry_run)


# ---------------------------------------------------------------- coverage


def _coverage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--day", type=_day, metavar="YYYY-MM-DD", help="the day, platform time (default: today)")
    _user_and_device(parser, "show")
    parser.epilog = (
        "Prints, per sensor of each device, its cadence, the day's readings by origin (push, sync, backfill,"
        " legacy), the gaps of the day (open: not yet asked of the vendor to the last page), the coverage ratio and the"
        " backfill calls spent today. Without --user or TLINK_SYNC_USER_IDS, every device. Read-only: runs"
        " alongside the service."
    )


def coverage_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print how complete the devices' readings are on one day."""
    return asyncio.run(_coverage(settings, args))


async def _coverage(settings: Settings, args: argparse.Namespace) -> int:
    now = utc_now()
    day = args.day or now.astimezone(settings.platform_zone).date()
    users = args.user or settings.TLINK_SYNC_USER_IDS or None
    async with open_database(settings) as db:
        devices = await owned_devices(db, users, args.device)
        for owner, device_id in devices:
            sensors = (await sensors_of(db, [device_id]))[device_id]
            found = await day_coverage(
                db, settings.SYNC_LOG_DIR, device_id, sensors, day, settings.BACKFILL_LOOKBACK_DAYS,
                now.strftime("%Y-%m-%d"),
            )  # fmt: skip
            print(f"device {device_id} (user {owner}) on {day}:")
            for sensor in found:
                _print_coverage(sensor, settings.BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY)
    if not devices:
        print("no device found", file=sys.stderr)
        return 1
    return 0


def _print_coverage(found: SensorCoverage, limit: int) -> None:
    origins = " ".join(f"{origin}={count}" for origin, count in found.readings.items())
    cadence = "none yet" if found.cadence is None else f"{found.cadence:g} s"
    ratio = "-" if found.ratio is None else f"{found.ratio:.4f}"
    print(
        f"  sensor {found.sensor.sensor_id}: cadence {cadence}, readings {origins}, open gaps {len(found.open_gaps)},"
        f" coverage {ratio}, calls today {found.calls_today}/{limit}" + (" (refused)" if found.refused_today else "")
    )
    for state in found.gaps:
        gap = state.gap
        print(
            f"    gap {gap.start:%Y-%m-%d %H:%M:%S} to {gap.end:%Y-%m-%d %H:%M:%S}, about {gap.missing} missing"
            + (" (the vendor has nothing more there)" if state.answered else "")
        )


# ---------------------------------------------------------------- import-legacy


def _import_legacy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mysql", required=True, metavar="URL",
        help="the original Flask service's database, mysql://user:password@host:port/name",
    )  # fmt: skip
    parser.add_argument(
        "--logs", type=Path, metavar="DIR",
        help="the original service's logs folder (default: SYNC_LOG_DIR, where it wrote them too)",
    )  # fmt: skip
    parser.epilog = (
        "Appends each row of the old devices, sensors and sensor_readings tables and each line of the old"
        f" per-device sync logs to the log as a `legacy` event; the old files are first moved, whole, to"
        f" SYNC_LOG_DIR/{IMPORTED_DIR}/<deviceId>/, and each run writes its record there"
        " (import-<time>.json). A second run imports nothing (what is imported is read from the log)."
        " Run it with the service stopped: it refuses while a service holds the log root. Exit status 0 when"
        " everything was imported, 1 when a row or line could not be placed (each one is printed and"
        " recorded), 2 when the old database cannot be read (nothing is changed)."
    )


def import_legacy_command(args: argparse.Namespace, settings: Settings) -> int:
    """Import the original service's database rows and sync-log lines as `legacy` events."""
    progress = Progress("import-legacy: events")
    try:
        report = asyncio.run(import_legacy(settings, args.mysql, args.logs, progress))
    except LegacyError as exc:
        print(f"tlink-push import-legacy: {exc}; nothing was changed", file=sys.stderr)
        return 2
    except ImportInterrupted as exc:
        print(f"tlink-push import-legacy: {exc}; the events appended before it stay in the log: run the command"
              " again to import the rest", file=sys.stderr)  # fmt: skip
        return 1
    except LogLocked as exc:
        print(f"tlink-push import-legacy: {exc}; stop the service first", file=sys.stderr)
        return 1
    finally:
        progress.done()
    _print_import(report)
    return 1 if report.problems else 0


def _print_import(report: ImportReport) -> None:
    for old, new in report.moved:
        print(f"moved {old} to {new}")
    for problem in report.problems:
        print(f"not imported: {describe_source(problem)}: {problem['reason']}", file=sys.stderr)
    print(f"{report.database}: {report.users} users")
    for name, count in (*report.tables.items(), *report.files.items()):
        what = "rows" if name in report.tables else "lines"
        print(
            f"{name}: {count.read} {what}, {count.imported} imported, {count.already} already imported,"
            f" {count.not_imported} not imported"
        )
    print(f"imported {report.imported} legacy events; {len(report.problems)} not imported; record: {report.record}")


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its --help line, its options and what it runs (returning the exit status)."""

    summary: str
    run: Callable[[argparse.Namespace, Settings], int]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


COMMANDS = {
    "serve": Command("run the HTTP service", serve, _serve_arguments),
    "replay": Command(
        "drop and rebuild the events table and read models from the log files (service stopped)",
        replay,
        _replay_arguments,
    ),
    "rebuild": Command(
        "rebuild the read models into new tables from the log and switch over while the service runs", rebuild_command
    ),
    "verify": Command(
        "check every hash chain and the last-line hashes recorded in the database", verify_command, _verify_arguments
    ),
    "backup": Command(
        "copy the log files into a folder with a manifest, while the service runs", backup_command, _backup_arguments
    ),
    "restore": Command(
        "check a backup against its manifest and copy it into an empty log root", restore_command, _restore_arguments
    ),
    "prune": Command(
        "apply log retention now: delete daily files older than LOG_AGE days", prune_command, _prune_arguments
    ),
    "sync": Command("run one TLINK cloud sync by hand (--once) and print what it did", sync_command, _sync_arguments),
    "backfill": Command(
        "find gaps in the readings and fill them from TLINK's sensor history, once",
        backfill_command,
        _backfill_arguments,
    ),
    "coverage": Command(
        "print how complete each sensor's readings are on one day", coverage_command, _coverage_arguments
    ),
    "import-legacy": Command(
        "import the original Flask service's MySQL readings and sync logs as legacy events (service stopped)",
        import_legacy_command,
        _import_legacy_arguments,
    ),
}
