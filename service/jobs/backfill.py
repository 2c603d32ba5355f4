"""Backfill: find each sensor's gaps in the read models and fill them from TLINK's sensor history.

A run takes the devices of the configured users (the `devices` read model), finds the
gaps of each of their sensors over the look-back window (projections.gaps), and asks
`getSensorHistroy` for exactly each gap's window, walking `nextPage` to the end. Every
call is logged in the device's log before it counts for anything (projections.history_calls):

- an answered page is one `backfill` event (`body`: the answer unchanged, `request`: the
  call's body), projected like every event: its readings `(sensor, addTime, val)` are
  stored unless already there;
- a refusal (`flag` other than "00") or a call that got no answer is one
  `backfill_failed` event; a refusal with flag "01" (the quota) leaves the sensor alone
  until the next UTC day, a call without an answer (the vendor down) ends the run.

The quota (BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY per sensor and UTC day), the windows
the vendor answered to their last page (never asked again) and where an unfinished
window goes on are all read back from the device's log, so a restart cannot overspend.
The backfill holds the same lock as the sync while it runs: the two never write a
device's log at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from eventlog.events import BACKFILL, BACKFILL_FAILED, utc_now
from projections import gaps as gap_rules
from projections.db import Database
from projections.gaps import Gap
from projections.history_calls import CallLedger, read_ledger
from projections.readings import backfill_readings
from projections.views import owned_devices, sensors_of
from service.config import Settings
from service.ingest import Ingestor
from service.jobs.tlink_client import TlinkBusinessError, TlinkClient, TlinkError

log = logging.getLogger("tlink.backfill")

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# What became of one gap in a run.
FILLED = "filled"  # asked to the last page, readings recovered
VENDOR_EMPTY = "vendor has none"  # asked to the last page, the vendor had nothing in it
ASKED_BEFORE = "asked before"  # an earlier run had it answered to the last page: no call
QUOTA_SPENT = "quota spent"  # the sensor's calls of the day are used up: left for tomorrow
REFUSED = "refused"  # the vendor refused a call (flag "01": the sensor waits for tomorrow)
REFUSED_TODAY = "refused today"  # the vendor refused the sensor (flag "01") earlier today: no call
NOT_ANSWERED = "not answered"  # the vendor did not answer: the run stopped
DRY_RUN = "dry run"  # --dry-run: no call made
UNFINISHED = "unfinished"  # the run ended before the gap's last page (the vendor down on another gap)


@dataclass(slots=True)
class GapReport:
    """One gap of one sensor, and what the run did about it."""

    device_id: int
    gap: Gap
    outcome: str = UNFINISHED
    calls: int = 0
    recovered: int = 0  # readings of the answers inside the gap's window


@dataclass(slots=True)
class BackfillReport:
    """What one run did."""

    started_at: datetime
    gaps: list[GapReport] = field(default_factory=list)
    devices: int = 0
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        """Calls made to the vendor."""
        return sum(g.calls for g in self.gaps)

    @property
    def recovered(self) -> int:
        """Readings recovered."""
        return sum(g.recovered for g in self.gaps)

    @property
    def failures(self) -> int:
        """Gaps whose calls the vendor refused or did not answer."""
        return sum(1 for g in self.gaps if g.outcome in (REFUSED, NOT_ANSWERED))

    @property
    def open_gaps(self) -> int:
        """Gaps not answered to their last page (still to be asked)."""
        return sum(1 for g in self.gaps if g.outcome not in (FILLED, VENDOR_EMPTY, ASKED_BEFORE))

    @property
    def outcome(self) -> str:
        """ok: no failure; failed: a failure and nothing recovered; partial: both."""
        if not self.failures:
            return "ok"
        return "partial" if self.recovered else "failed"


@dataclass(slots=True)
class BackfillStats:
    """Counters of the backfill since start-up, read by metrics."""

    runs: dict[str, int] = field(default_factory=lambda: {"ok": 0, "partial": 0, "failed": 0})
    calls: dict[str, int] = field(default_factory=lambda: {"ok": 0, "refused": 0, "failed": 0})
    recovered: int = 0
    quota_refusals: int = 0  # gaps left for another day because their sensor's calls were used up
    open_gaps: int = 0  # after the last run
    running: bool = False
    last_finished_at: datetime | None = None

    def note_run(self, report: BackfillReport) -> None:
        """Count a finished run."""
        self.runs[report.outcome] += 1
        self.recovered += report.recovered
        self.quota_refusals += sum(1 for g in report.gaps if g.outcome == QUOTA_SPENT)
        self.open_gaps = report.open_gaps
        self.last_finished_at = utc_now()


class VendorDown(Exception):
    """A history call got no answer: the rest of the run waits for the next one."""


class Backfill:
    """Finds and fills gaps; not reentrant (ExclusiveJob in the service), and it holds `lock` while it runs."""

    def __init__(
        self,
        client: TlinkClient,
        ingestor: Ingestor,
        db: Database,
        root: Path,
        stats: BackfillStats,
        lock: asyncio.Lock,
        *,
        zone: tzinfo,
        user_ids: Sequence[int],
        lookback_days: int,
        max_calls: int,
        page_size: int,
    ) -> None:
        self.client, self.ingestor, self.db, self.root = client, ingestor, db, root
        self.stats, self.lock, self.zone = stats, lock, zone
        self.user_ids = list(user_ids)
        self.lookback = timedelta(days=lookback_days)
        self.max_calls = max_calls
        self.page_size = page_size

    async def run(
        self,
        user_ids: Sequence[int] | None = None,
        device_id: int | None = None,
        since: date | None = None,
        dry_run: bool = False,
    ) -> BackfillReport:
        """One pass over the users' devices (or one device), gaps from `since` (default: the look-back window)."""
        async with self.lock:
            report = BackfillReport(started_at=utc_now())
            started = time.monotonic()
            self.stats.running = True
            try:
                await self._run(report, user_ids or self.user_ids, device_id, since, dry_run)
            finally:
                self.stats.running = False
                report.seconds = time.monotonic() - started
            if not dry_run:
                self.stats.note_run(report)
        log.info(
            "TLINK backfill completed devices=%d gaps=%d calls=%d recovered=%d open=%d seconds=%.3f",
            report.devices, len(report.gaps), report.calls, report.recovered, report.open_gaps, report.seconds,
            extra={"outcome": report.outcome, "dry_run": dry_run},
        )  # fmt: skip
        return report

    async def _run(
        self, report: BackfillReport, user_ids: Sequence[int], device_id: int | None, since: date | None, dry_run: bool
    ) -> None:
        now = utc_now()
        since_time = datetime.combine(since, datetime.min.time()) if since else self._platform_now() - self.lookback
        for owner, device in await owned_devices(self.db, user_ids, device_id):
            report.devices += 1
            sensors = [s.sensor_id for s in (await sensors_of(self.db, [device]))[device]]
            times = await gap_rules.reading_times(self.db, device, sensors, since_time)
            # A call about a gap is made after the gap's first second, so its line is in a file of that day or later.
            first_day = (since_time - timedelta(days=1)).strftime("%Y-%m-%d")
            ledger = await asyncio.get_running_loop().run_in_executor(
                None, read_ledger, self.root, device, first_day, now.strftime("%Y-%m-%d")
            )
            for sensor_id in sensors:
                for gap in gap_rules.find_gaps(sensor_id, times[sensor_id])[1]:
                    found = GapReport(device, gap)
                    report.gaps.append(found)
                    try:
                        await self._fill(found, owner, ledger, dry_run)
                    except VendorDown:
                        return

    def _platform_now(self) -> datetime:
        return utc_now().astimezone(self.zone).replace(tzinfo=None)

    async def _fill(self, found: GapReport, owner: int, ledger: CallLedger, dry_run: bool) -> None:
        gap, calls = found.gap, ledger.of(found.gap.sensor_id)
        if ledger.answered(gap.sensor_id, gap.start, gap.end):
            found.outcome = ASKED_BEFORE
            return
        paging = ledger.resume_from(gap.sensor_id, gap.start, gap.end)
        while True:
            if calls.refused_today:
                found.outcome = REFUSED_TODAY
                return
            if calls.spent_today >= self.max_calls:
                found.outcome = QUOTA_SPENT
                return
            if dry_run:
                found.outcome = DRY_RUN
                return
            request = {
                "sensorId": gap.sensor_id, "startDate": gap.start.strftime(TIME_FORMAT),
                "endDate": gap.end.strftime(TIME_FORMAT), "pagingState": paging, "pageSize": self.page_size,
            }  # fmt: skip
            answer = await self._call(found, owner, ledger, request)
            if answer is None:
                return
            paging = str(answer.get("nextPage") or "")
            if not paging:
                found.outcome = FILLED if found.recovered else VENDOR_EMPTY
                return

    async def _call(
        self, found: GapReport, owner: int, ledger: CallLedger, request: dict[str, Any]
    ) -> dict[str, Any] | None:
        """One history call, logged in the device's log; the answer, or None when the vendor refused it."""
        found.calls += 1
        try:
            answer = await self.client.get_sensor_history(owner, request)
        except TlinkBusinessError as exc:
            await self._failed(found, owner, ledger, request, {"flag": exc.flag, "msg": exc.msg}, str(exc))
            found.outcome = REFUSED
            self.stats.calls["refused"] += 1
            return None
        except TlinkError as exc:
            await self._failed(found, owner, ledger, request, {"error": str(exc)}, str(exc))
            found.outcome = NOT_ANSWERED
            self.stats.calls["failed"] += 1
            raise VendorDown(str(exc)) from exc
        self.stats.calls["ok"] += 1
        readings = backfill_readings(answer, request)
        await self.ingestor.record(BACKFILL, found.device_id, owner, answer, readings, request)
        ledger.add(BACKFILL, ledger.today, request, answer)
        found.recovered += sum(1 for r in readings if found.gap.start <= r.recorded_at <= found.gap.end)
        return answer

    async def _failed(
        self, found: GapReport, owner: int, ledger: CallLedger, request: dict[str, Any], body: dict[str, Any], why: str
    ) -> None:
        log.warning(
            "TLINK backfill call failed: %s", why,
            extra={"device": found.device_id, "sensor": found.gap.sensor_id, "window": request["startDate"]},
        )  # fmt: skip
        await self.ingestor.record(BACKFILL_FAILED, found.device_id, owner, body, None, request)
        ledger.add(BACKFILL_FAILED, ledger.today, request, body)


def build_backfill(
    settings: Settings, client: TlinkClient, ingestor: Ingestor, db: Database, stats: BackfillStats, lock: asyncio.Lock
) -> Backfill:
    """The backfill for these settings."""
    return Backfill(
        client, ingestor, db, settings.SYNC_LOG_DIR, stats, lock, zone=settings.platform_zone,
        user_ids=settings.TLINK_SYNC_USER_IDS, lookback_days=settings.BACKFILL_LOOKBACK_DAYS,
        max_calls=settings.BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY, page_size=settings.BACKFILL_PAGE_SIZE,
    )  # fmt: skip

