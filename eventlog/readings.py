"""What a push body or a synced device object says: ids and sensor readings.

Push bodies are checked here (`parse_push`) before they are logged, so every logged
push can be read back without errors; sync bodies come from the vendor's REST API and
are read leniently.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, NamedTuple

from eventlog.events import PUSH, SYNC, Event, EventLogError

_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$")
_CLOCK_RE = re.compile(r"^\d{2}:\d{2}:\d{2}$")
MAX_ID = 2**63 - 1


class InvalidBody(EventLogError):
    """A push body that cannot be accepted; the message names the problem."""


class Reading(NamedTuple):
    """One sample of one sensor, identified by (sensor_id, recorded_at).

    A named tuple rather than a frozen dataclass: it is made for every sample of every
    replayed event, and a tuple is several times cheaper to build.
    """

    sensor_id: int
    recorded_at: datetime  # platform time, no zone
    sensor_timestamp: str | None
    value: str | None
    raw_value: str | None
    is_alarm: bool | None
    is_line: bool | None


@dataclass(frozen=True, slots=True)
class ParsedPush:
    """The validated parts of a push body."""

    device_id: int
    user_id: int
    sent: datetime  # the body's `time`: when the device uploaded, platform time
    readings: list[Reading]


def parse_id(value: Any, name: str) -> int:
    """A positive integer id, from a JSON number or a string of digits."""
    if isinstance(value, bool):
        raise InvalidBody(f"{name} must be an integer, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise InvalidBody(f"{name} must be an integer, got {value!r}")
    if not 0 < value <= MAX_ID:
        raise InvalidBody(f"{name} must be a positive integer, got {value}")
    return value


def parse_platform_time(text: Any, name: str = "time") -> datetime:
    """A TLINK 'YYYY-MM-DD HH:MM:SS' time ('T' accepted), no zone."""
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise InvalidBody(f"{name} must be 'YYYY-MM-DD HH:MM:SS', got {text!r}")
    try:  # slicing is some twenty times faster than strptime, which matters per reading
        return datetime(
            int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), int(text[17:19])
        )
    except ValueError as exc:
        raise InvalidBody(f"{name} is not a valid date and time: {text!r}") from exc


def flag_bool(value: Any) -> bool | None:
    """TLINK's "0"/"1"/0/1 flags as booleans; empty or unknown is None."""
    if isinstance(value, bool):
        return value
    if value in (1, "1"):
        return True
    if value in (0, "0"):
        return False
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def reading_time(sent: datetime, times: Any, index: int) -> datetime:
    """Date of `time` plus clock `times`; a clock later than `time`'s belongs to the day before."""
    if times is None or times == "":
        return sent
    if not isinstance(times, str) or not _CLOCK_RE.match(times):
        raise InvalidBody(f"sensorsDates[{index}].times must be 'HH:MM:SS', got {times!r}")
    try:
        clock = time(int(times[0:2]), int(times[3:5]), int(times[6:8]))
    except ValueError as exc:
        raise InvalidBody(f"sensorsDates[{index}].times is not a valid time: {times!r}") from exc
    moment = datetime.combine(sent.date(), clock)
    return moment - timedelta(days=1) if clock > sent.time() else moment


def cached_reading_time(sent: datetime, times: Any, index: int, clocks: dict[Any, datetime]) -> datetime:
    """`reading_time`, remembered in `clocks` per `times`: the samples of an upload mostly share one."""
    if isinstance(times, str) and times in clocks:
        return clocks[times]
    moment = reading_time(sent, times, index)
    if isinstance(times, str):
        clocks[times] = moment
    return moment


def parse_push(body: Any) -> ParsedPush:
    """Check a push body and extract its readings; InvalidBody names what is wrong."""
    if not isinstance(body, dict):
        raise InvalidBody("body must be a JSON object")
    for field in ("deviceId", "deviceUserid", "sensorsDates"):
        if field not in body:
            raise InvalidBody(f"missing field {field}")
    device_id = parse_id(body["deviceId"], "deviceId")
    user_id = parse_id(body["deviceUserid"], "deviceUserid")
    entries = body["sensorsDates"]
    if not isinstance(entries, list):
        raise InvalidBody("sensorsDates must be a list")
    sent = parse_platform_time(body.get("time"), "time")
    clocks: dict[Any, datetime] = {}  # the samples of one upload mostly share one `times`
    readings = [_push_reading(entry, i, sent, clocks) for i, entry in enumerate(entries)]
    return ParsedPush(device_id=device_id, user_id=user_id, sent=sent, readings=readings)


def _sensor_id(value: Any, index: int) -> int:
    if type(value) is int and 0 < value <= MAX_ID:
        return value  # the common case, without building the error message's name
    return parse_id(value, f"sensorsDates[{index}].sensorsId")


def _push_reading(entry: Any, index: int, sent: datetime, clocks: dict[Any, datetime]) -> Reading:
    if not isinstance(entry, dict):
        raise InvalidBody(f"sensorsDates[{index}] must be an object")
    if "sensorsId" not in entry:
        raise InvalidBody(f"missing field sensorsDates[{index}].sensorsId")
    sensor_id = _sensor_id(entry["sensorsId"], index)
    return push_reading(entry, sensor_id, cached_reading_time(sent, entry.get("times"), index, clocks))


def push_reading(entry: dict[str, Any], sensor_id: int, moment: datetime) -> Reading:
    """A push entry's reading, with its sensor id and reading time already worked out."""
    return Reading(
        sensor_id, moment, _text(entry.get("times")), _text(entry.get("value")), _text(entry.get("reVal")),
        flag_bool(entry.get("isAlarm")), flag_bool(entry.get("isLine")),
    )  # fmt: skip


def sync_readings(body: dict[str, Any]) -> list[Reading]:
    """Readings of a synced device object: one per sensor that has ever reported."""
    readings = []
    for sensor in body.get("sensorsList") or []:
        if not isinstance(sensor, dict) or not sensor.get("updateDate"):
            continue
        try:
            readings.append(
                Reading(
                    sensor_id=parse_id(sensor.get("id"), "id"),
                    recorded_at=parse_platform_time(sensor["updateDate"], "updateDate"),
                    sensor_timestamp=str(sensor["updateDate"]),
                    value=_text(sensor.get("value")),
                    raw_value=None,
                    is_alarm=flag_bool(sensor.get("isAlarms")) or False,
                    is_line=flag_bool(sensor.get("isLine")),
                )
            )
        except InvalidBody:
            continue  # a vendor record we cannot date is metadata only
    return readings


# Readings of recently parsed events by event id: the webhook parses a push to check it,
# and the projector needs the same readings a moment later.
class Parsed(NamedTuple):
    """What is known of an event's body: its readings, and for a push its digest and `time`."""

    readings: list[Reading]
    digest: str | None = None  # eventlog.events.body_digest of the body, if already computed
    sent: datetime | None = None  # a push body's `time`


_recent: OrderedDict[str, Parsed] = OrderedDict()
_RECENT_MAX = 4096


def remember_readings(
    event_id: str, readings: list[Reading], digest: str | None = None, sent: datetime | None = None
) -> None:
    """Keep what the webhook (or the sync) worked out about an event's body for `parsed_of`."""
    _recent[event_id] = Parsed(readings, digest, sent)
    if len(_recent) > _RECENT_MAX:
        _recent.popitem(last=False)


def parsed_of(event: Event) -> Parsed:
    """What is known of an event's body: remembered if the event is recent, else read from it now."""
    known = _recent.pop(event.id, None)
    if known is not None:
        return known
    if event.type == PUSH:
        parsed = parse_push(event.body)
        return Parsed(parsed.readings, None, parsed.sent)
    if event.type == SYNC:
        return Parsed(sync_readings(event.body))
    return Parsed([])


def readings_of(event: Event) -> list[Reading]:
    """The readings an event carries (none for event types without readings)."""
    return parsed_of(event).readings
