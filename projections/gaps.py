"""Gaps: where a sensor's readings in the read models are further apart than its cadence allows.

A sensor's cadence is the median interval between its consecutive readings over a
look-back window; with fewer than MIN_READINGS readings there it has no cadence and no
gaps. A gap is two consecutive readings more than `max(2.5 x cadence, cadence + 60 s)`
apart. Every origin counts (push, sync, backfill): a sync records the vendor's newest
reading (`updateDate`) as a reading, so readings the service never got before it are
the gap that ends there. Computed from `sensor_readings`, never from the files.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from projections.db import Database, placeholders
from projections.views import platform_time

MIN_READINGS = 10
ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Gap:
    """Readings missing between two consecutive readings of a sensor."""

    sensor_id: int
    after: datetime  # the reading before the gap
    before: datetime  # the reading after it
    cadence: float  # the sensor's cadence, seconds

    @property
    def start(self) -> datetime:
        """The first second of the gap: just after the reading before it."""
        return self.after + ONE_SECOND

    @property
    def end(self) -> datetime:
        """The last second of the gap: just before the reading after it."""
        return self.before - ONE_SECOND

    @property
    def missing(self) -> int:
        """Readings the cadence says should be there."""
        return max(1, round((self.before - self.after).total_seconds() / self.cadence) - 1)


def cadence(times: Sequence[datetime]) -> float | None:
    """The median interval, in seconds, between consecutive reading times (ascending); None under MIN_READINGS."""
    if len(times) < MIN_READINGS:
        return None
    return float(statistics.median((b - a).total_seconds() for a, b in pairwise(times)))


def threshold(seconds: float) -> float:
    """The interval past which two consecutive readings of a sensor of this cadence have a gap between them."""
    return max(2.5 * seconds, seconds + 60)


def find_gaps(sensor_id: int, times: Sequence[datetime]) -> tuple[float | None, list[Gap]]:
    """The sensor's cadence over these reading times (ascending) and its gaps among them, oldest first."""
    every = cadence(times)
    if every is None:
        return None, []
    limit = threshold(every)
    gaps = [Gap(sensor_id, a, b, every) for a, b in pairwise(times) if (b - a).total_seconds() > limit]
    return every, gaps


async def reading_times(
    db: Database, device_id: int, sensor_ids: Sequence[int], since: datetime, until: datetime | None = None
) -> dict[int, list[datetime]]:
    """Each sensor's reading times from `since` (to `until`), ascending, from `sensor_readings`."""
    found: dict[int, list[datetime]] = {s: [] for s in sensor_ids}
    if not sensor_ids:
        return found
    sql = (
        "SELECT sensor_id, recorded_at FROM sensor_readings"
        f" WHERE device_id = %s AND sensor_id IN ({placeholders(len(sensor_ids))}) AND recorded_at >= %s"
    )
    params: list[object] = [device_id, *sensor_ids, since]
    if until is not None:
        sql += " AND recorded_at <= %s"
        params.append(until)
    for sensor_id, recorded_at in await db.fetchall(sql + " ORDER BY sensor_id, recorded_at", params):
        moment = platform_time(recorded_at)
        if moment is not None:
            found[int(sensor_id)].append(moment)
    return found


async def readings_by_origin(
    db: Database, device_id: int, start: datetime, end: datetime
) -> dict[int, dict[str, int]]:
    """Per sensor, its readings from `start` to `end` (inclusive) by the type of the event that brought them."""
    rows = await db.fetchall(
        "SELECT r.sensor_id, e.type, COUNT(*) FROM sensor_readings r JOIN events e ON e.event_id = r.event_id"
        " WHERE r.device_id = %s AND r.recorded_at >= %s AND r.recorded_at <= %s GROUP BY r.sensor_id, e.type",
        [device_id, start, end],
    )
    found: dict[int, dict[str, int]] = {}
    for sensor_id, kind, count in rows:
        found.setdefault(int(sensor_id), {})[str(kind)] = int(count)
    return found
