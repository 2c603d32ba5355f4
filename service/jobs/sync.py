"""The TLINK cloud sync: every page of getDeviceSensorDatas, one `sync` event per device.

A run walks each configured user's pages and appends every device object through
the same pipeline as pushes (log line, then projection), which is how the read
models learn names, units and numbers. A failure is logged, counted and recorded
(`sync_failed` in the device's log when there is a device, else a line in the
sync-failures file); it ends that user's walk but never the run, the next run or
the service.

The log keeps information, not repetition: a device object identical to the body of
the device's newest `sync` event (the same JSON value whatever the key order or
spacing, eventlog.events.body_digest, and recorded for the same user) is not appended
again; the run counts it as unchanged. That newest event comes from the device's log,
read backward the first time the device is synced after start-up and then kept in
memory (service.jobs.sync_state), so a restart does not log an unchanged device again.
Only `sync` events count: a `push` or a `sync_failed` in between changes nothing.

"New readings" of a run are the (sensor, reading time) pairs of the appended devices
that `sensor_readings` did not hold for that device just before it was appended (an
unchanged device brings none). When the database cannot be asked, a reading counts as
new when it is later than the newest one this process has seen for that device's sensor
(an estimate, right after a restart too high).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from eventlog.deadletter import RecordLog
from eventlog.events import SYNC_FAILED, body_digest, format_instant, utc_now
from eventlog.retention import SYNC_FAILURES_DIR, sync_failures_path
from projections.db import Database, DatabaseError, placeholders
from projections.readings import InvalidBody, Reading, parse_id, sync_readings
from projections.views import platform_time
from service.config import Settings
from service.ingest import Ingestor
from service.jobs.sync_state import LastSync, LastSyncs
from service.jobs.tlink_client import TlinkClient, TlinkClientConfig, TlinkError

log = logging.getLogger("tlink.sync")

OK, PARTIAL, FAILED = "ok", "partial", "failed"
ReadingKey = tuple[int, datetime]  # (sensor, reading time) of one device
SensorKey = tuple[int, int]  # (device, sensor): two devices may report the same sensor id


@dataclass(slots=True)
class UserReport:
    """What one run did for one TLINK user."""

    user_id: int
    pages: int = 0  # pages fetched
    devices: int = 0  # sync events appended
    unchanged: int = 0  # device objects identical to their device's newest sync event, not appended
    readings: int = 0  # new readings among the appended devices
    failures: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SyncReport:
    """What one run did."""

    started_at: datetime
    users: list[UserReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def devices(self) -> int:
        """Sync events appended."""
        return sum(u.devices for u in self.users)

    @property
    def unchanged(self) -> int:
        """Device objects not appended: identical to their device's newest sync event."""
        return sum(u.unchanged for u in self.users)

    @property
    def readings(self) -> int:
        """New readings."""
        return sum(u.readings for u in self.users)

    @property
    def failures(self) -> int:
        """Failures recorded."""
        return sum(u.failures for u in self.users)

    @property
    def outcome(self) -> str:
        """ok: no failure; failed: failures and no device synced (appended or unchanged); partial: both."""
        if not self.failures:
            return OK
        return PARTIAL if self.devices or self.unchanged else FAILED


RunObserver = Callable[[SyncReport], None]


@dataclass(slots=True)
class SyncStats:
    """Counters of the sync since start-up, read by metrics; `observers` see every finished run."""

    runs: dict[str, int] = field(default_factory=lambda: {OK: 0, PARTIAL: 0, FAILED: 0})
    skipped_runs: int = 0  # scheduled runs dropped because one was still going
    devices: int = 0
    unchanged: int = 0
    readings: int = 0
    failures: int = 0
    token_refreshes: int = 0  # tokens obtained, the first one included
    token_grants: dict[str, int] = field(default_factory=dict)  # the same by grant type
    last_outcome: str | None = None
    last_finished_at: datetime | None = None
    running: bool = False
    interval_seconds: int | None = None  # TLINK_SYNC_INTERVAL_SECONDS while the sync is scheduled
    observers: list[RunObserver] = field(default_factory=list)

    def note_token(self, grant: str) -> None:
        """TlinkClient's on_token_refresh hook."""
        self.token_refreshes += 1
        self.token_grants[grant] = self.token_grants.get(grant, 0) + 1

    def note_run(self, report: SyncReport) -> None:
        """Count a finished run and tell the observers."""
        self.runs[report.outcome] += 1
        self.devices += report.devices
        self.unchanged += report.unchanged
        self.readings += report.readings
        self.failures += report.failures
        self.last_outcome = report.outcome
        self.last_finished_at = utc_now()
        for observer in self.observers:
            observer(report)


class SyncFailureLog:
    """Failures no device can own, as fsynced JSON lines in <root>/sync-failures/sync-failures-YYYY-MM-DD.log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._log = RecordLog()

    async def write(self, record: dict[str, Any]) -> Path:
        """Append one record (its `at` names the day); returns the file."""
        path = sync_failures_path(self.root, str(record["at"])[:10])
        await self._log.append(path, record)
        return path


def client_config(settings: Settings) -> TlinkClientConfig:
    """The TLINK client's configuration from the settings."""
    return TlinkClientConfig(
        base_url=settings.TLINK_BASE_URL,
        app_id=settings.TLINK_APP_ID,
        client_id=settings.TLINK_OAUTH_CLIENT_ID,
        client_secret=settings.TLINK_OAUTH_CLIENT_SECRET,
        username=settings.TLINK_OAUTH_USERNAME,
        password=settings.TLINK_OAUTH_PASSWORD,
        sensor_data_path=settings.TLINK_SENSOR_DATA_PATH,
        history_path=settings.TLINK_HISTORY_PATH,
        http_method=settings.TLINK_SENSOR_HTTP_METHOD,
        timeout_seconds=settings.TLINK_HTTP_TIMEOUT,
        token_url=settings.TLINK_OAUTH_TOKEN_URL,
        scope=settings.TLINK_OAUTH_SCOPE or None,
        refresh_buffer_seconds=settings.TLINK_OAUTH_REFRESH_BUFFER,
    )


def build_client(settings: Settings, session: aiohttp.ClientSession, stats: SyncStats) -> TlinkClient:
    """The TLINK client for these settings, on `session` (which the caller closes); tokens are counted in `stats`."""
    return TlinkClient(session, client_config(settings), on_token_refresh=stats.note_token)


def build_sync(
    settings: Settings, client: TlinkClient, ingestor: Ingestor, db: Database | None, stats: SyncStats,
    lock: asyncio.Lock | None = None,
) -> TlinkSync:
    """A sync for these settings; `lock` is held while it runs (shared with the backfill)."""
    return TlinkSync(
        client, ingestor, db, SyncFailureLog(settings.SYNC_LOG_DIR), stats,
        user_ids=settings.TLINK_SYNC_USER_IDS, page_size=settings.TLINK_SYNC_PAGE_SIZE, lock=lock,
    )  # fmt: skip


class BadDevice(Exception):
    """A device object that cannot become a `sync` event (the projection could not read it)."""

    def __init__(self, message: str, device_id: int | None) -> None:
        super().__init__(message)
        self.device_id = device_id


def check_device(device: dict[str, Any]) -> int:
    """The id of a device object that can become a `sync` event; BadDevice otherwise."""
    try:
        device_id = parse_id(device.get("id"), "id")
    except InvalidBody as exc:
        raise BadDevice(f"device object without a usable id: {exc}", None) from None
    sensors = device.get("sensorsList")
    if sensors is not None and not isinstance(sensors, list):
        raise BadDevice(f"device {device_id}: sensorsList is not a list", device_id)
    return device_id


def owner_of(device: dict[str, Any], user_id: int) -> int:
    """The device's owning user (its `userId`, as pushes carry it), else the user that was asked for."""
    try:
        return parse_id(device.get("userId"), "userId")
    except InvalidBody:
        return user_id


def describe(error: BaseException) -> str:
    """A failure in one line; TLINK errors already say what and never carry a secret."""
    return str(error) if isinstance(error, TlinkError) else f"{type(error).__name__}: {error}"


class TlinkSync:
    """Syncs users page by page; not reentrant: the caller runs one at a time (ExclusiveJob in the service)."""

    def __init__(
        self,
        client: TlinkClient,
        ingestor: Ingestor,
        db: Database | None,
        failures: SyncFailureLog,
        stats: SyncStats,
        *,
        user_ids: Sequence[int],
        page_size: int,
        last_syncs: LastSyncs | None = None,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.client = client
        self.ingestor = ingestor
        self.db = db
        self.failures = failures
        self.stats = stats
        self.user_ids = list(user_ids)
        self.page_size = page_size
        store = ingestor.store
        self.last_syncs = last_syncs if last_syncs is not None else LastSyncs(store.root, store.durable_end)
        self._newest_seen: dict[SensorKey, datetime] = {}
        self.lock = lock or asyncio.Lock()  # never writing a device's log while the backfill does

    async def run(self, user_ids: Sequence[int] | None = None) -> SyncReport:
        """Sync every configured user (or `user_ids`), log the summary and count it."""
        async with self.lock:
            report = SyncReport(started_at=utc_now())
            started = time.monotonic()
            self.stats.running = True
            try:
                for user_id in user_ids or self.user_ids:
                    report.users.append(await self._sync_user(user_id))
            finally:
                self.stats.running = False
        report.seconds = time.monotonic() - started
        self.stats.note_run(report)
        log.info(
            "TLINK sync completed users=%d devices=%d unchanged=%d readings=%d failures=%d seconds=%.3f",
            len(report.users), report.devices, report.unchanged, report.readings, report.failures, report.seconds,
            extra={"outcome": report.outcome},
        )  # fmt: skip
        return report

    async def _sync_user(self, user_id: int) -> UserReport:
        result = UserReport(user_id)
        page, pages = 1, 1
        while page <= pages:
            try:
                answer = await self.client.get_device_sensor_datas(user_id, page, self.page_size)
            except Exception as exc:  # any failure: recorded, and the next user still runs
                # Pages can shift between requests and these errors are rarely page-specific:
                # the next run starts this user again from page 1.
                await self._fail(result, page, exc)
                break
            result.pages += 1
            pages = answer["pages"]  # the latest answer wins: devices added mid-walk change it
            for device in answer["dataList"]:
                await self._sync_device(result, page, device)
            page += 1
        return result

    async def _sync_device(self, result: UserReport, page: int, device: dict[str, Any]) -> None:
        try:
            device_id = check_device(device)
        except BadDevice as exc:
            await self._fail(
                result, page, str(exc), exc.device_id, owner=owner_of(device, result.user_id), device=device
            )
            return
        owner = owner_of(device, result.user_id)
        sensors = len(device.get("sensorsList") or [])
        try:
            readings = sync_readings(device)
            last = LastSync(owner, body_digest(device))
            if await self.last_syncs.get(device_id) == last:
                self._saw(device_id, readings)
                result.unchanged += 1
                log.debug(
                    "TLINK device unchanged",
                    extra={"user": result.user_id, "device": device_id, "page": page, "sensors": sensors},
                )
                return
            known = await self._known(device_id, readings)
            await self.ingestor.sync_device(owner, device, readings)
        except Exception as exc:
            # The append may have happened (and the projection failed): read the log again next time.
            self.last_syncs.forget(device_id)
            await self._fail(result, page, exc, device_id, owner=owner)
            return
        self.last_syncs.appended(device_id, last.user_id, last.digest)
        new = sum(1 for r in readings if (r.sensor_id, r.recorded_at) not in known)
        self._saw(device_id, readings)
        result.devices += 1
        result.readings += new
        log.info(
            "TLINK device synced",
            extra={"user": result.user_id, "device": device_id, "page": page, "sensors": sensors, "readings": new},
        )

    def _saw(self, device_id: int, readings: list[Reading]) -> None:
        """Keep the newest reading time of each of the device's sensors (the estimate when the database is down)."""
        for reading in readings:
            key = (device_id, reading.sensor_id)
            newest = self._newest_seen.get(key)
            if newest is None or reading.recorded_at > newest:
                self._newest_seen[key] = reading.recorded_at

    async def _known(self, device_id: int, readings: list[Reading]) -> set[ReadingKey]:
        """Which of this device's readings are already known (see the module docstring)."""
        if not readings:
            return set()
        if self.db is not None and self.ingestor.projector.available:
            try:
                return await self._stored(self.db, device_id, readings)
            except DatabaseError as exc:
                log.debug("new readings estimated, database unavailable: %s", exc)
        return {
            (r.sensor_id, r.recorded_at)
            for r in readings
            if (newest := self._newest_seen.get((device_id, r.sensor_id))) is not None and r.recorded_at <= newest
        }

    async def _stored(self, db: Database, device_id: int, readings: list[Reading]) -> set[ReadingKey]:
        sensors = sorted({r.sensor_id for r in readings})
        times = sorted({r.recorded_at for r in readings})
        rows = await db.fetchall(
            "SELECT sensor_id, recorded_at FROM sensor_readings WHERE device_id = %s"
            f" AND sensor_id IN ({placeholders(len(sensors))}) AND recorded_at IN ({placeholders(len(times))})",
            [device_id, *sensors, *times],
        )
        return {(int(r[0]), when) for r in rows if (when := platform_time(r[1])) is not None}

    async def _fail(
        self,
        result: UserReport,
        page: int,
        error: BaseException | str,
        device_id: int | None = None,
        *,
        owner: int | None = None,
        device: dict[str, Any] | None = None,
    ) -> None:
        text = error if isinstance(error, str) else describe(error)
        result.failures += 1
        result.errors.append(f"page {page}: {text}")
        log.warning(
            "TLINK sync failed: %s", text,
            extra={"user": result.user_id, "page": page, "device": device_id},
            exc_info=error if isinstance(error, Exception) and not isinstance(error, TlinkError) else None,
        )  # fmt: skip
        body: dict[str, Any] = {"userId": result.user_id, "page": page, "error": text, "at": format_instant(utc_now())}
        if device is not None:
            body["device"] = device  # what TLINK sent, unchanged
        if device_id is not None and await self._record_in_device_log(device_id, owner or result.user_id, body):
            return
        try:
            await self.failures.write({**body, "deviceId": device_id} if device_id is not None else body)
        except OSError as exc:
            log.error("TLINK sync failure could not be written to %s: %s", SYNC_FAILURES_DIR, exc)

    async def _record_in_device_log(self, device_id: int, user_id: int, body: dict[str, Any]) -> bool:
        try:
            await self.ingestor.record(SYNC_FAILED, device_id, user_id, body)
        except Exception as exc:
            log.error("sync_failed event for device %d could not be appended: %s", device_id, exc)
            return False
        return True


