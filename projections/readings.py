"""What a push body, a synced device object, a history page or an imported legacy row says: ids and readings.

Push bodies are checked here (`parse_push`) before they are logged, so every logged
push can be read back without errors and every value it gives a read-model column fits
that column (the limits below); sync bodies come from the vendor's REST API and are read
leniently, cut to the same limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, NamedTuple

from eventlog.events import BACKFILL, LEGACY, PUSH, SYNC, Event, EventLogError

# ---------------------------------------------------------------- limits
# What a push may carry into the read models. parse_push checks every value that reaches
# a column against these before the body is logged (a value that does not fit is an
# InvalidBody: a 400 and a dead-letter entry), so the projector can write every logged
# push. The SQL schemas size their columns to hold them, and the lenient reading of
# sync answers cuts its text to them. Lengths are in characters (code points), as
# MariaDB counts them for utf8mb4; a character takes at most 4 bytes.

MIN_YEAR = 1000  # dates (`time`, every reading time, a sync's updateDate): years MIN_YEAR..MAX_YEAR,
MAX_YEAR = 9999  # what a DATETIME holds and what reads back from SQLite's four-digit text dates
MAX_ID = 2**63 - 1  # deviceId, deviceUserid, sensorsId: 1..MAX_ID (BIGINT)
MAX_SENSOR_TYPE_ID = 2**63 - 1  # sensorsTypeId: MIN_SENSOR_TYPE_ID..MAX_SENSOR_TYPE_ID (BIGINT)
MIN_SENSOR_TYPE_ID = -MAX_SENSOR_TYPE_ID  # symmetric: -2**63 is left out, as the projections read it
MAX_PARENT_USER_ID_CHARS = 64  # parentUserId's text (users/devices.parent_user_id VARCHAR(64))
MAX_FLAG_CHARS = 16  # flag's text (devices.last_flag VARCHAR(16))
MAX_UNIT_CHARS = 64  # a sample's unit (sensors.unit VARCHAR(64))
MAX_VALUE_CHARS = 1024  # a sample's value and reVal (TEXT: 65,535 bytes hold 1024 characters of 4 bytes)

# Numbers written as text: ASCII digits only, the whole text (no whitespace, no trailing
# newline; `\d` and `int()` would also take "١٢٣" or "１٢", and `$` a final "\n").
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}\Z")
_CLOCK_RE = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}\Z")
_DIGITS_RE = re.compile(r"[0-9]+\Z")
_SIGNED_DIGITS_RE = re.compile(r"[+-]?[0-9]+\Z")
_INTEGER_TEXT_RE = re.compile(r"-?[0-9]+\Z")
_INTEGER_TEXT_MAX = len(str(MIN_SENSOR_TYPE_ID))  # "-9223372036854775807": 20 characters
_FIRST_DAY_WITH_A_DAY_BEFORE = datetime(MIN_YEAR, 1, 2)  # a reading time dated the day before must be on or after it
_ONE_DAY = timedelta(days=1)


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


def integer_text(text: str, max_digits: int = 19, signed: bool = False) -> int | None:
    """The integer a text writes in ASCII digits (with `signed`, an optional leading '+' or '-'),
    the whole text and at most `max_digits` digits; None for any other text. The one rule for
    numbers given as text: push bodies, sync answers, path and query parameters."""
    if len(text) > max_digits + (1 if signed else 0):
        return None
    if not (_SIGNED_DIGITS_RE if signed else _DIGITS_RE).match(text):
        return None
    if signed and len(text.lstrip("+-")) > max_digits:
        return None
    return int(text)


def parse_id(value: Any, name: str) -> int:
    """A positive integer id, from a JSON number or a string of ASCII digits (nothing else)."""
    if isinstance(value, bool):
        raise InvalidBody(f"{name} must be an integer, got {value!r}")
    if isinstance(value, str):
        number = integer_text(value)
        if number is None:
            raise InvalidBody(
                f"{name} must be an integer (a number, or a string of at most 19 ASCII digits), got {_shown(value)}"
            )
        value = number
    elif isinstance(value, float) and value.is_integer() and abs(value) < 2.0**63:  # 5001.0 is JSON's 5001
        value = int(value)
    if not isinstance(value, int):
        raise InvalidBody(f"{name} must be an integer, got {_shown(value)}")
    if not 0 < value <= MAX_ID:
        raise InvalidBody(f"{name} must be a positive integer, got {value}")
    return value


def parse_platform_time(text: Any, name: str = "time") -> datetime:
    """A TLINK 'YYYY-MM-DD HH:MM:SS' time ('T' accepted), no zone."""
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise InvalidBody(f"{name} must be 'YYYY-MM-DD HH:MM:SS' in ASCII digits, got {_shown(text)}")
    year = int(text[0:4])
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise InvalidBody(f"{name} must have a year from {MIN_YEAR} to {MAX_YEAR}, got {text!r}")
    try:  # slicing is some twenty times faster than strptime, which matters per reading
        return datetime(year, int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), int(text[17:19]))
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


def _shown(value: Any) -> str:
    """A value for an error message: a long string by its length only (messages go to the dead-letter log)."""
    if isinstance(value, str) and len(value) > 40:
        return f"a string of {len(value)} characters"
    return repr(value)


_JSON_KIND = {dict: "an object", list: "an array", bool: "a boolean", float: "a number", int: "an integer"}


def _checked_text(value: Any, name: str, limit: int, numbers: tuple[type, ...] = (int, float)) -> str | None:
    """Absent/null, or a string or a number (of the `numbers` types; never a boolean) whose
    text is at most `limit` characters: that text. InvalidBody names `name` and the limit."""
    if value is None:
        return None
    if isinstance(value, str):
        text = str(value)
    elif isinstance(value, numbers) and not isinstance(value, bool):
        try:
            text = str(value)
        except ValueError:  # an integer of more digits than Python writes out
            raise InvalidBody(f"{name} must be at most {limit} characters, got a longer number") from None
    else:
        kinds = "a string or an integer" if float not in numbers else "a string or a number"
        raise InvalidBody(f"{name} must be {kinds}, got {_JSON_KIND.get(type(value), type(value).__name__)}")
    if len(text) > limit:
        raise InvalidBody(f"{name} must be at most {limit} characters, got {len(text)}")
    return text


def _check_sensor_type_id(value: Any, index: int) -> None:
    """sensorsDates[index].sensorsTypeId: absent/null/"", or an integer from MIN_SENSOR_TYPE_ID to
    MAX_SENSOR_TYPE_ID, as a JSON number or a string of ASCII digits with an optional leading minus."""
    if value is None or value == "":
        return
    if isinstance(value, str) and len(value) <= _INTEGER_TEXT_MAX and _INTEGER_TEXT_RE.match(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():  # 781.0: JSON's integer 781 written as a float
        number = int(value)
    else:
        number = None
    if number is None or not MIN_SENSOR_TYPE_ID <= number <= MAX_SENSOR_TYPE_ID:
        raise InvalidBody(
            f"sensorsDates[{index}].sensorsTypeId must be an integer from {MIN_SENSOR_TYPE_ID} to {MAX_SENSOR_TYPE_ID}"
            f" (a number, or a string of digits with an optional '-'), got {_shown(value)}"
        )


def reading_time(sent: datetime, times: Any, index: int) -> datetime:
    """Date of `time` plus clock `times`; a clock later than `time`'s belongs to the day before."""
    if times is None or times == "":
        return sent
    if not isinstance(times, str) or not _CLOCK_RE.match(times):
        raise InvalidBody(f"sensorsDates[{index}].times must be 'HH:MM:SS' in ASCII digits, got {_shown(times)}")
    try:
        clock = time(int(times[0:2]), int(times[3:5]), int(times[6:8]))
    except ValueError as exc:
        raise InvalidBody(f"sensorsDates[{index}].times is not a valid time: {times!r}") from exc
    moment = datetime.combine(sent.date(), clock)
    if clock <= sent.time():
        return moment
    if moment < _FIRST_DAY_WITH_A_DAY_BEFORE:  # the day before would be before MIN_YEAR (or before datetime.min)
        raise InvalidBody(
            f"sensorsDates[{index}].times {times!r} is later than the clock of time, so the reading is of the day"
            f" before {sent.date().isoformat()}: reading times must have a year from {MIN_YEAR} to {MAX_YEAR}"
        )
    return moment - _ONE_DAY


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
    parent = body.get("parentUserId")
    if parent is not None and (type(parent) is not str or len(parent) > MAX_PARENT_USER_ID_CHARS):
        _checked_text(parent, "parentUserId", MAX_PARENT_USER_ID_CHARS, (int,))
    flag = body.get("flag")
    if flag is not None and (type(flag) is not str or len(flag) > MAX_FLAG_CHARS):
        _checked_text(flag, "flag", MAX_FLAG_CHARS, (int,))
    clocks: dict[Any, datetime] = {}  # the samples of one upload mostly share one `times`
    readings = [_push_reading(entry, i, sent, clocks) for i, entry in enumerate(entries)]
    return ParsedPush(device_id=device_id, user_id=user_id, sent=sent, readings=readings)


def read_logged_push(body: Any) -> ParsedPush:
    """A logged push read leniently: ids and times must hold, texts are cut to their limits.

    For pushes logged before a limit of `parse_push` existed; InvalidBody when the body
    cannot be read at all.
    """
    if not isinstance(body, dict) or not isinstance(body.get("sensorsDates"), list):
        raise InvalidBody("body must be a JSON object with a sensorsDates list")
    device_id = _logged_id(body.get("deviceId"), "deviceId")
    user_id = _logged_id(body.get("deviceUserid"), "deviceUserid")
    sent = parse_platform_time(_logged_digits(body.get("time")), "time")
    readings = []
    for index, entry in enumerate(body["sensorsDates"]):
        if not isinstance(entry, dict):
            raise InvalidBody(f"sensorsDates[{index}] must be an object")
        sensor_id = _logged_id(entry.get("sensorsId"), f"sensorsDates[{index}].sensorsId")
        times = entry.get("times")
        moment = reading_time(sent, _logged_digits(times), index)
        readings.append(
            Reading(
                sensor_id, moment, _text(times), _cut(entry.get("value"), MAX_VALUE_CHARS),
                _cut(entry.get("reVal"), MAX_VALUE_CHARS), flag_bool(entry.get("isAlarm")),
                flag_bool(entry.get("isLine")),
            )
        )  # fmt: skip
    return ParsedPush(device_id=device_id, user_id=user_id, sent=sent, readings=readings)


def _logged_digits(value: Any) -> Any:
    """A logged id or time as the rules before ASCII digits read it: surrounding whitespace
    dropped, other decimal digits ("١٢٣", "１٢") as their ASCII digits."""
    if isinstance(value, str):
        text = value.strip()
        if text != value or not text.isascii():
            return "".join(str(int(c)) if c.isdecimal() else c for c in text)
    return value


def _logged_id(value: Any, name: str) -> int:
    """parse_id, also reading the ids earlier rules accepted (see _logged_digits)."""
    return parse_id(_logged_digits(value), name)


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
    # Every check starts with a test the common value passes at once; the name of the
    # field in an error message is only built when a value needs a closer look.
    type_id = entry.get("sensorsTypeId")
    if type(type_id) is not int or not MIN_SENSOR_TYPE_ID <= type_id <= MAX_SENSOR_TYPE_ID:
        _check_sensor_type_id(type_id, index)
    unit = entry.get("unit")
    if unit is not None and (type(unit) is not str or len(unit) > MAX_UNIT_CHARS):
        _checked_text(unit, f"sensorsDates[{index}].unit", MAX_UNIT_CHARS)
    value = entry.get("value")
    if value is not None and (type(value) is not str or len(value) > MAX_VALUE_CHARS):
        value = _checked_text(value, f"sensorsDates[{index}].value", MAX_VALUE_CHARS)
    raw = entry.get("reVal")
    if raw is not None and (type(raw) is not str or len(raw) > MAX_VALUE_CHARS):
        raw = _checked_text(raw, f"sensorsDates[{index}].reVal", MAX_VALUE_CHARS)
    times = entry.get("times")
    moment = cached_reading_time(sent, times, index, clocks)
    # What push_reading makes, from the values checked above: `times` is None or a string here.
    return Reading(
        sensor_id, moment, _text(times), value, raw, flag_bool(entry.get("isAlarm")), flag_bool(entry.get("isLine"))
    )


def push_reading(entry: dict[str, Any], sensor_id: int, moment: datetime) -> Reading:
    """A push entry's reading, with its sensor id and reading time already worked out."""
    return Reading(
        sensor_id, moment, _text(entry.get("times")), _text(entry.get("value")), _text(entry.get("reVal")),
        flag_bool(entry.get("isAlarm")), flag_bool(entry.get("isLine")),
    )  # fmt: skip


def sync_readings(body: dict[str, Any]) -> list[Reading]:
    """Readings of a synced device object: one per sensor that has ever reported.

    Read leniently: a sensor without a usable `updateDate` (none, not a platform time, a
    year outside MIN_YEAR..MAX_YEAR) gives no reading, and a `value` is cut to
    MAX_VALUE_CHARS characters.
    """
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
                    value=_cut(sensor.get("value"), MAX_VALUE_CHARS),
                    raw_value=None,
                    is_alarm=flag_bool(sensor.get("isAlarms")) or False,
                    is_line=flag_bool(sensor.get("isLine")),
                )
            )
        except InvalidBody:
            continue  # a vendor record we cannot date (or date within MIN_YEAR..MAX_YEAR) is metadata only
    return readings


def backfill_readings(body: dict[str, Any], request: dict[str, Any] | None) -> list[Reading]:
    """Readings of one page of a sensor's history (getSensorHistroy): one per `dataList` item.

    The sensor is the one the request asked for. Read leniently like a sync: an item
    without a usable `addTime` gives no reading, a `val` is cut to MAX_VALUE_CHARS.
    """
    try:
        sensor_id = parse_id((request or {}).get("sensorId"), "sensorId")
    except InvalidBody:
        return []
    readings = []
    for item in body.get("dataList") or []:
        if not isinstance(item, dict):
            continue
        try:
            moment = parse_platform_time(item.get("addTime"), "addTime")
        except InvalidBody:
            continue
        value = _cut(item.get("val"), MAX_VALUE_CHARS)
        readings.append(Reading(sensor_id, moment, str(item["addTime"]), value, None, None, None))
    return readings


# ---------------------------------------------------------------- the original Flask service
# What `legacy` events carry (tlink-push import-legacy, docs/event-log.md): a row of the old
# MySQL database (`source`: {"table", "key"}) or a line of its sync logs (`source`: {"file", "line"}).

LEGACY_DEVICES = "devices"  # a row: a device's metadata and owner (the old TLINK deviceId is `device_id`)
LEGACY_SENSORS = "sensors"  # a row: a sensor's type and unit (its TLINK sensorsId is `sensors_id`)
LEGACY_READINGS = "sensor_readings"  # a row: one reading; its sensor's TLINK id is the source's `sensorsId`


def legacy_row_reading(body: dict[str, Any], source: dict[str, Any]) -> Reading:
    """The reading of an old `sensor_readings` row: reading time `recorded_at`, `value`, `re_val`,
    `sensor_timestamp`, `is_alarm`, `is_line`; InvalidBody when it cannot be placed."""
    sensor_id = parse_id(source.get("sensorsId"), "the sensor's sensors_id")
    moment = parse_platform_time(_legacy_time_text(body.get("recorded_at")), "recorded_at")
    return Reading(
        sensor_id, moment, _text(body.get("sensor_timestamp")), _cut(body.get("value"), MAX_VALUE_CHARS),
        _cut(body.get("re_val"), MAX_VALUE_CHARS), flag_bool(body.get("is_alarm")), flag_bool(body.get("is_line")),
    )  # fmt: skip


def _legacy_time_text(value: Any) -> Any:
    """A DATETIME of the old database as text, without fractional seconds ('YYYY-MM-DD HH:MM:SS')."""
    if isinstance(value, str) and len(value) > 19 and value[19] == ".":
        return value[:19]
    return value


def legacy_line_readings(text: str, device_id: int) -> list[Reading]:
    """The readings of one line of the old sync log, `TIME | device=ID | sensors=N | SENSOR:VALUE | ...`.

    Fields are separated by `|` (blanks around them ignored): the first is the sync's time
    ('YYYY-MM-DD HH:MM:SS', every reading's time), `key=value` fields say of the line
    (`device` must be `device_id`, `sensors` the count of readings), and each `SENSOR:VALUE`
    is one reading. InvalidBody names what does not fit.
    """
    fields = [field.strip() for field in text.split("|")]
    moment = parse_platform_time(fields[0], "the line's first field (its time)")
    readings, declared = [], None
    for field in fields[1:]:
        key, equals, said = field.partition("=")
        if equals:
            if key.strip() == "device" and integer_text(said.strip()) != device_id:
                raise InvalidBody(f"the line says device={said.strip()}, but it is in the log of device {device_id}")
            if key.strip() == "sensors":
                declared = integer_text(said.strip())
            continue
        sensor, colon, value = field.partition(":")
        sensor_id = integer_text(sensor.strip()) if colon else None
        if not sensor_id or sensor_id > MAX_ID:
            raise InvalidBody(f"field {_shown(field)} is neither key=value nor SENSOR:VALUE")
        readings.append(Reading(sensor_id, moment, fields[0], value.strip()[:MAX_VALUE_CHARS], None, None, None))
    if not readings:
        raise InvalidBody("the line has no SENSOR:VALUE field")
    if declared is not None and declared != len(readings):
        raise InvalidBody(f"the line says sensors={declared} but has {len(readings)} SENSOR:VALUE fields")
    return readings


def legacy_readings(device_id: int, body: dict[str, Any], source: dict[str, Any] | None) -> list[Reading]:
    """Readings of a `legacy` event (a reading row or a log line; none for other rows), read leniently:
    what cannot be placed gives no reading (the importer reports such rows and lines and never logs them)."""
    source = source or {}
    try:
        if "file" in source:
            line = body.get("line")
            return legacy_line_readings(line, device_id) if isinstance(line, str) else []
        if source.get("table") == LEGACY_READINGS:
            return [legacy_row_reading(body, source)]
    except InvalidBody:
        pass
    return []


def _cut(value: Any, limit: int) -> str | None:
    """Lenient text: cut to `limit` characters."""
    return None if value is None else str(value)[:limit]


class Parsed(NamedTuple):
    """What is known of an event's body: its readings, and for a push its digest and `time`.

    The webhook works this out when it checks a push and hands it to the projector with the
    event (projections.projector.Staged), so the body is not read twice; events read back
    from the log are read with `read_event`.
    """

    readings: list[Reading]
    digest: str | None = None  # eventlog.events.body_digest of the body, if already computed
    sent: datetime | None = None  # a push body's `time`


def read_event(event: Event) -> Parsed:
    """What an event's body says (a push logged before a limit was added is read as it was accepted then)."""
    if event.type == PUSH:
        try:
            parsed = parse_push(event.body)
        except InvalidBody:
            parsed = read_logged_push(event.body)
        return Parsed(parsed.readings, None, parsed.sent)
    if event.type == SYNC:
        return Parsed(sync_readings(event.body))
    if event.type == BACKFILL:
        return Parsed(backfill_readings(event.body, event.request))
    if event.type == LEGACY:
        return Parsed(legacy_readings(event.device_id, event.body, event.source))
    return Parsed([])


def readings_of(event: Event) -> list[Reading]:
    """The readings an event carries (none for event types without readings)."""
    return read_event(event).readings
