"""The projector's hand-written MySQL value lists say exactly what the generic literal path says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.events import PUSH, SYNC, Event, encode_line, line_hash, new_event_id
from projections.changes import Placed, changes_of
from projections.db import Literals, mysql_multirow
from projections.mysql_text import mysql_literals
from projections.sql_recorder import ROW_BUILDERS, Statements

STATEMENTS = Statements("mysql")
# Vendor text with everything a literal must escape, and what it must leave alone.
AWKWARD = st.one_of(
    st.none(),
    st.sampled_from(["", "12.5", "O'Brien", "back\\slash", "nul\x00byte", 'quote"double', "ünïcødé", "\\'"]),
    st.text(max_size=12),
)


def placed(event_type: str, device_id: int, body: dict[str, Any], at: datetime, line_no: int) -> Placed:
    event = Event(new_event_id(), event_type, at, device_id, int(body.get("deviceUserid", 385)), body)
    line = encode_line(event, "0" * 64)
    return Placed(event, event.day, line_no, 100 * line_no, len(line) + 1, line_hash(line))


def generic(name: str, changes: Any) -> list[str]:
    return mysql_multirow(getattr(STATEMENTS, name), ROW_BUILDERS[name](changes))


def assert_same(batch: list[Placed]) -> None:
    changes = changes_of(batch)
    for name, literals in mysql_literals(changes).items():
        assert isinstance(literals, Literals)
        if not literals:
            assert ROW_BUILDERS[name](changes) == []
            continue
        assert mysql_multirow(getattr(STATEMENTS, name), literals) == generic(name, changes), name


def test_a_realistic_batch_is_written_the_same_way() -> None:
    at = datetime(2026, 4, 1, 23, 59, 58, 123456, tzinfo=UTC)
    batch = []
    for i in range(12):
        body = {
            "flag": "00", "deviceId": 2864 + i % 3, "deviceUserid": 385, "parentUserId": "217",
            "time": "2026-04-02 00:00:10",
            "sensorsDates": [
                {"sensorsId": 10 * i + s, "times": "23:59:50" if s % 2 else "00:00:05", "value": f"{s}.5",
                 "reVal": f"{s}.4999", "isAlarm": str(s % 2), "isLine": 1, "sensorsTypeId": s % 3}
                for s in range(1, 7)
            ],
        }  # fmt: skip
        batch.append(placed(PUSH, 2864 + i % 3, body, at + timedelta(microseconds=i * 250_000), i + 1))
    sync = {"id": 2864, "deviceName": "Tank", "sensorsList": [{"id": 11, "updateDate": "2026-04-01 22:00:00",
            "value": "1", "isAlarms": "1", "isLine": "0"}]}  # fmt: skip
    batch.append(placed(SYNC, 2864, sync, at.replace(microsecond=0), 13))
    assert_same(batch)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.tuples(AWKWARD, AWKWARD, st.sampled_from(["0", "1", "", None, 1, 0])), min_size=1, max_size=5),
    parent=AWKWARD,
    flag=AWKWARD,
    offset_hours=st.integers(-12, 14),
    microsecond=st.integers(0, 999_999),
)
def test_any_vendor_text_is_written_the_same_way(
    values: list[tuple[str | None, str | None, Any]], parent: str | None, flag: str | None,
    offset_hours: int, microsecond: int,
) -> None:  # fmt: skip
    zone = timezone(timedelta(hours=offset_hours))
    at = datetime(2026, 4, 1, 12, 0, 0, microsecond, tzinfo=zone)
    body = {
        "deviceId": 7, "deviceUserid": 9, "parentUserId": parent, "flag": flag, "time": "2026-04-01 12:00:00",
        "sensorsDates": [
            {"sensorsId": 70 + i, "times": "11:59:00", "value": value, "reVal": raw, "isAlarm": alarm}
            for i, (value, raw, alarm) in enumerate(values)
        ],
    }  # fmt: skip
    assert_same([placed(PUSH, 7, body, at, 1)])
