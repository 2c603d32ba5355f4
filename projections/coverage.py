"""How complete a device's readings are on one day: per sensor its cadence, its readings by origin,
the gaps still open and the backfill calls spent (projections.gaps, projections.history_calls)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

from projections.db import Database
from projections.gaps import Gap, find_gaps, reading_times, readings_by_origin
from projections.history_calls import read_ledger
from projections.views import SensorView

ORIGINS = ("push", "sync", "backfill", "legacy")


@dataclass(frozen=True, slots=True)
class GapState:
    """A gap of the day, and whether the vendor has answered its window to the last page."""

    gap: Gap
    answered: bool


@dataclass(frozen=True, slots=True)
class SensorCoverage:
    """One sensor on one day."""

    sensor: SensorView
    cadence: float | None  # seconds, over the look-back window ending with the day
    readings: dict[str, int]  # origin -> readings of the day
    gaps: list[GapState]  # gaps overlapping the day, oldest first
    calls_today: int  # backfill calls spent on the current UTC day
    refused_today: bool

    @property
    def open_gaps(self) -> list[Gap]:
        """Gaps the vendor has not answered yet."""
        return [g.gap for g in self.gaps if not g.answered]

    @property
    def ratio(self) -> float | None:
        """Readings of the day over those plus the open gaps' estimated missing readings (None: nothing expected)."""
        present = sum(self.readings.values())
        expected = present + sum(g.missing for g in self.open_gaps)
        return None if expected == 0 else round(present / expected, 4)


async def day_coverage(
    db: Database,
    root: Path,
    device_id: int,
    sensors: list[SensorView],
    day: date,
    lookback_days: int,
    today_utc: str,
) -> list[SensorCoverage]:
    """Each sensor's coverage on `day` (platform time)."""
    start, end = datetime.combine(day, time.min), datetime.combine(day, time(23, 59, 59))
    since = start - timedelta(days=lookback_days)
    ids = [s.sensor_id for s in sensors]
    times = await reading_times(db, device_id, ids, since, end)
    origins = await readings_by_origin(db, device_id, start, end)
    first_day = (since - timedelta(days=1)).strftime("%Y-%m-%d")
    ledger = await asyncio.get_running_loop().run_in_executor(None, read_ledger, root, device_id, first_day, today_utc)
    found = []
    for sensor in sensors:
        every, gaps = find_gaps(sensor.sensor_id, times[sensor.sensor_id])
        of_day = [g for g in gaps if g.after < end and g.before > start]
        calls = ledger.of(sensor.sensor_id)
        found.append(
            SensorCoverage(
                sensor,
                every,
                {origin: origins.get(sensor.sensor_id, {}).get(origin, 0) for origin in ORIGINS},
                [GapState(g, ledger.answered(g.sensor_id, g.start, g.end)) for g in of_day],
                calls.spent_today,
                calls.refused_today,
            )
        )
    return found
