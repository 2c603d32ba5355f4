"""The hottest rows of a batch written straight as MySQL value lists.

`read_model_rows` and `log_rows` build tuples that the database layer turns into
literals by looking up each value's type. For the rows every push writes (its event,
its device, and one reading and one latest value per sensor) the column types are
known, so one format string per row does the same several times faster. The text is
exactly what the generic path writes; a test holds the two equal.
"""

from __future__ import annotations

from datetime import datetime

from projections.changes import Changes, event_row_body, user_uuid
from projections.db import Literals, datetime_literal, quote, text_literal

_FLAG = {None: "NULL", True: "1", False: "0"}


class _Times:
    """DATETIME literals of one batch: the samples of an upload mostly share a time."""

    def __init__(self) -> None:
        self._known: dict[datetime, str] = {}

    def __call__(self, value: datetime | None) -> str:
        if value is None:
            return "NULL"
        text = self._known.get(value)
        if text is None:
            text = self._known[value] = datetime_literal(value)
        return text


def _number(value: int | None) -> str:
    return "NULL" if value is None else str(value)


def mysql_literals(changes: Changes) -> dict[str, Literals]:
    """Value lists for the statements named like `Statements`' attributes: events, device_push,
    sensor_latest and readings."""
    when = _Times()
    digests = changes.digests
    text = text_literal
    flag = _FLAG
    events = Literals(
        f"({quote(p.event.id)},{quote(p.event.type)},{p.event.device_id},{p.event.user_id},"
        f"{when(p.event.received_at)},{quote(p.day)},{p.line_no},{p.offset},{text(digests.get(p.event.id))},"
        f"{quote(p.hash)},{quote(event_row_body(p.event))})"
        for p in changes.events
    )
    device_push = Literals(
        f"({d.device_id},{quote(user_uuid(d.tlink_user_id))},{d.tlink_user_id},{quote(d.event_id)},"
        f"{text(d.parent_user_id)},"
        f"{text(d.last_flag)},{when(d.last_push_time)},{when(d.last_event_at)})"
        for d in changes.device_pushes.values()
    )
    latest = Literals()
    for s in changes.sensor_latest.values():
        sensor_id, recorded_at, stamp, value, raw, alarm, line = s.reading
        latest.append(
            f"({sensor_id},{s.device_id},{_number(s.sensor_type_id)},{text(s.unit)},{text(value)},{text(raw)},"
            f"{text(stamp)},{flag[alarm]},{flag[line]},{when(recorded_at)})"
        )
    readings = Literals()
    for device_id, (sensor_id, recorded_at, stamp, value, raw, alarm, line), event_id in changes.readings.values():
        readings.append(
            f"({sensor_id},{when(recorded_at)},{device_id},{text(stamp)},{text(value)},{text(raw)},"
            f"{flag[alarm]},{flag[line]},{quote(event_id)})"
        )
    return {"events": events, "device_push": device_push, "sensor_latest": latest, "readings": readings}
