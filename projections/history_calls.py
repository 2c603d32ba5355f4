"""What a device's log says of the sensor-history calls made for it (backfill), per sensor.

Every call to the vendor's sensor history is logged in the device's log before anything
else happens: a `backfill` event for an answered page (`request`: the call's body,
`body`: the answer unchanged), a `backfill_failed` event for a call the vendor refused
(`body`: its flag and msg) or did not answer (`body.error`). Reading those lines back
tells, after any restart, how many calls each sensor has spent on a UTC day, which
windows the vendor answered to their last page (not to be asked again), where an
unfinished window's next page starts, and whether the vendor refused the sensor today.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from eventlog.events import BACKFILL, BACKFILL_FAILED
from eventlog.files import device_days, log_path, read_lines
from projections.readings import InvalidBody, parse_id, parse_platform_time

QUOTA_REFUSAL_FLAG = "01"  # the vendor's flag for a call past the quota (and for other refusals)
_MARK = b'"type":"backfill'  # both event types' lines hold it; other lines are not parsed


@dataclass(slots=True)
class SensorCalls:
    """One sensor's history calls."""

    spent_today: int = 0
    refused_today: bool = False
    complete: list[tuple[datetime, datetime]] = field(default_factory=list)  # windows answered to the last page
    next_page: dict[tuple[datetime, datetime], str] = field(default_factory=dict)  # unfinished window -> cursor


class CallLedger:
    """The history calls of one device, per sensor, as its log has them (and as this run adds them)."""

    def __init__(self, today: str) -> None:
        self.today = today  # the current UTC day: the quota's day
        self._sensors: dict[int, SensorCalls] = {}

    def of(self, sensor_id: int) -> SensorCalls:
        """The calls of one sensor (none yet: an empty record)."""
        return self._sensors.setdefault(sensor_id, SensorCalls())

    def add(self, kind: str, day: str, request: dict[str, Any], body: dict[str, Any]) -> None:
        """Count one logged call: of `kind` (BACKFILL or BACKFILL_FAILED), logged on UTC `day`."""
        try:
            sensor_id = parse_id(request.get("sensorId"), "sensorId")
            window = (parse_platform_time(request.get("startDate")), parse_platform_time(request.get("endDate")))
        except InvalidBody:
            return  # not a request this service makes
        calls = self.of(sensor_id)
        if day == self.today:
            calls.spent_today += 1
            calls.refused_today |= kind == BACKFILL_FAILED and str(body.get("flag")) == QUOTA_REFUSAL_FLAG
        if kind != BACKFILL:
            return
        cursor = body.get("nextPage")
        if cursor:
            calls.next_page[window] = str(cursor)
        else:
            calls.next_page.pop(window, None)
            calls.complete.append(window)

    def answered(self, sensor_id: int, start: datetime, end: datetime) -> bool:
        """Has the vendor answered a window holding [start, end] to its last page?"""
        return any(low <= start and end <= high for low, high in self.of(sensor_id).complete)

    def resume_from(self, sensor_id: int, start: datetime, end: datetime) -> str:
        """The paging state to ask this window with: "" for the first page, or where an earlier run stopped."""
        return self.of(sensor_id).next_page.get((start, end), "")


def read_ledger(root: Path, device_id: int, since_day: str, today: str) -> CallLedger:
    """The device's history calls logged in its files of `since_day` and later (blocking: run it in a thread)."""
    ledger = CallLedger(today)
    for day in device_days(root, device_id):
        if day < since_day:
            continue
        try:
            lines = list(read_lines(log_path(root, device_id, day), 0, 1, day))
        except FileNotFoundError:
            continue  # removed by retention meanwhile
        for line in lines:
            if _MARK not in line.raw:
                continue
            try:
                doc = orjson.loads(line.raw)
            except orjson.JSONDecodeError:
                continue
            kind, request, body = doc.get("type"), doc.get("request"), doc.get("body")
            if kind in (BACKFILL, BACKFILL_FAILED) and isinstance(request, dict) and isinstance(body, dict):
                ledger.add(kind, str(doc.get("receivedAt", ""))[:10], request, body)
    return ledger
