"""Query and path parameters of the read API: each declared once, parsed strictly.

A malformed value is a 400 naming the parameter, never a silent default. The same
declarations describe the parameters in the OpenAPI document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from eventlog.events import EVENT_TYPES
from projections import readings
from projections.history import Window
from projections.readings import MAX_ID, MAX_YEAR, MIN_YEAR, InvalidBody, parse_platform_time
from service.http.middleware.errors import ApiError

MAX_PAGE = 1_000_000_000  # page and pageSize above it are a 400 (pageSize over MAX_PAGE_SIZE is capped first)

# Dates as regular expressions (the same text in Python and in the document's ECMA-262
# patterns): exactly the real Gregorian dates of the years MIN_YEAR..MAX_YEAR, ASCII digits
# only, so the document's pattern and the service accept and refuse the same values.
assert (MIN_YEAR, MAX_YEAR) == (1000, 9999), "the year pattern below spells out this range"
_YEAR = "[1-9][0-9]{3}"
_LEAP_YEAR = "(?:[1-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[13579][26])00)"
_DATE = (
    f"(?:{_YEAR}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
    f"|{_LEAP_YEAR}-02-29)"
)
CLOCK_PATTERN = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
_DAY_RE = re.compile(f"^{_DATE}$")
TIME_PATTERN = f"^{_DATE}[ T]{CLOCK_PATTERN}$"
_TIME_RE = re.compile(TIME_PATTERN)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter as the OpenAPI document states it."""

    name: str
    where: str  # "path" or "query"
    schema: dict[str, Any]
    description: str
    required: bool = field(default=False)


_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
USER_ID = Param("userId", "path", _ID, "TLINK user id", True)
DEVICE_ID = Param("deviceId", "path", _ID, "TLINK device id", True)
DEVICE_FILTER = Param("deviceId", "query", _ID, "only this device (404 if not theirs)")
START_TIME = Param(
    "startTime", "query", {"type": "string", "pattern": TIME_PATTERN},
    "earliest reading time, inclusive: YYYY-MM-DD HH:MM:SS (or with T), platform time;"
    " a real date of the years 1000 to 9999; after endTime is a 400 (a schema cannot say so)",
)  # fmt: skip
END_TIME = Param(
    "endTime", "query", {"type": "string", "pattern": TIME_PATTERN},
    "latest reading time, inclusive: YYYY-MM-DD HH:MM:SS (or with T), platform time;"
    " a real date of the years 1000 to 9999; before startTime is a 400 (a schema cannot say so)",
)  # fmt: skip
PAGE = Param(
    "page", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}, "1-based page number"
)
PAGE_SIZE = Param(
    "pageSize", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    "items per page; larger values are capped",
)  # fmt: skip
HISTORY_LIMIT = Param("historyLimit", "query", {"type": "integer", "minimum": 0}, "readings per sensor, newest first")
DAY = Param(
    "day", "query", {"type": "string", "pattern": _DAY_RE.pattern},
    "only this UTC day's file (YYYY-MM-DD, a real date of the years 1000 to 9999)",
)  # fmt: skip
COVERAGE_DAY = Param(
    "day", "query", {"type": "string", "pattern": _DAY_RE.pattern},
    "the day, platform time (YYYY-MM-DD, a real date of the years 1000 to 9999; default: today on the platform's"
    " clock, TLINK_TIMEZONE; UTC when unset)",
)  # fmt: skip
EVENT_TYPE = Param("type", "query", {"type": "string", "enum": sorted(EVENT_TYPES)}, "only events of this type")
SENSOR_FILTER = Param(
    "sensorId", "query", {"type": "array", "items": _ID},
    "only these sensors (repeat the parameter for several: ?sensorId=1&sensorId=2)",
)  # fmt: skip
BEFORE = Param(
    "before", "query", {"type": "string", "pattern": TIME_PATTERN},
    "cursor: only readings strictly older than this reading time (YYYY-MM-DD HH:MM:SS or with T, platform time);"
    " pass a sensor's `next` to get its next older page; not after startTime (a schema cannot say so)",
)  # fmt: skip
FORMATS = ("csv", "json")
FORMAT = Param(
    "format", "query", {"type": "string", "enum": list(FORMATS)},
    "json (default) or csv (one row per reading); without it, an Accept header preferring text/csv gives csv",
)  # fmt: skip
STREAM_DEVICES = Param(
    "deviceId", "query", {"type": "array", "items": _ID},
    "only these devices (repeat the parameter for more than one; 404 if one is not the user's)",
)  # fmt: skip
_HEX = "[0-9a-fA-F]"
UUID7_PATTERN = f"^{_HEX}{{8}}-{_HEX}{{4}}-7{_HEX}{{3}}-[89abAB]{_HEX}{{3}}-{_HEX}{{12}}$"
LAST_EVENT_ID = Param(
    "lastEventId", "query", {"type": "string", "pattern": UUID7_PATTERN},
    "resume after this event id (what the Last-Event-ID header says, which wins when both are sent); 410 if its day"
    " is older than LOG_AGE",
)  # fmt: skip


def path_id(request: web.Request, param: Param) -> int:
    """A positive integer id from the path."""
    return _positive(param.name, request.match_info[param.name])


def optional_id(request: web.Request, param: Param) -> int | None:
    """A positive integer id from the query, if given."""
    text = request.query.get(param.name)
    return None if text is None else _positive(param.name, text)


def ids(request: web.Request, param: Param) -> list[int] | None:
    """Positive integer ids from a repeatable query parameter (None: not given)."""
    texts = request.query.getall(param.name, [])
    return [_positive(param.name, text) for text in texts] if texts else None


def _positive(name: str, text: str) -> int:
    value = _integer(name, text)
    if not 0 < value <= MAX_ID:
        raise ApiError(400, f"{name} must be a positive integer at most {MAX_ID}, got {text!r}")
    return value


def _integer(name: str, text: str) -> int:
    value = readings.integer_text(text, signed=True)  # ASCII digits only, no whitespace: the rule of push bodies
    if value is None:
        raise ApiError(400, f"{name} must be an integer of at most 19 ASCII digits, got {text!r}")
    return value


def integer(request: web.Request, param: Param, default: int, minimum: int, maximum: int | None = None) -> int:
    """An integer from the query (default when absent), at least `minimum` and at most `maximum`.

    `maximum` defaults to the declaration's schema maximum, so the document states it.
    """
    text = request.query.get(param.name)
    if text is None:
        return default
    value = _integer(param.name, text)
    if value < minimum:
        raise ApiError(400, f"{param.name} must be at least {minimum}, got {value}")
    if maximum is None:
        maximum = param.schema.get("maximum")
    if maximum is not None and value > maximum:
        raise ApiError(400, f"{param.name} must be at most {maximum}, got {value}")
    return value


def page(request: web.Request, default_size: int, max_size: int) -> tuple[int, int]:
    """(page, pageSize): each at most MAX_PAGE (400); pageSize over `max_size` is capped to it."""
    return integer(request, PAGE, 1, 1), min(integer(request, PAGE_SIZE, default_size, 1), max_size)


def history_limit(request: web.Request, default: int, maximum: int) -> int:
    """historyLimit: 400 over the maximum (a cap would silently cut a history short)."""
    value = integer(request, HISTORY_LIMIT, min(default, maximum), 0)
    if value > maximum:
        raise ApiError(400, f"historyLimit must be at most {maximum} (MAX_HISTORY_LIMIT), got {value}")
    return value


def _platform_time_param(request: web.Request, param: Param) -> datetime | None:
    text = request.query.get(param.name)
    if text is None:
        return None
    if not _TIME_RE.fullmatch(text):  # exactly the document's pattern: no spaces around, a real date
        raise ApiError(400, f"{param.name} must be a real date and time 'YYYY-MM-DD HH:MM:SS' (years {MIN_YEAR}"
                            f" to {MAX_YEAR}), got {text!r}")  # fmt: skip
    try:
        return parse_platform_time(text, param.name)
    except InvalidBody as exc:
        raise ApiError(400, str(exc)) from None


def window(request: web.Request) -> Window:
    """The [startTime, endTime] window; 400 if start is after end."""
    start, end = _platform_time_param(request, START_TIME), _platform_time_param(request, END_TIME)
    if start is not None and end is not None and start > end:
        raise ApiError(400, f"startTime ({start:%Y-%m-%d %H:%M:%S}) is after endTime ({end:%Y-%m-%d %H:%M:%S})")
    return Window(start, end)


ONE_SECOND = timedelta(seconds=1)  # the resolution of reading times
_FIRST_MOMENT = datetime(MIN_YEAR, 1, 1)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """What a history request asks for: the window (`before` folded into its end), the readings per sensor,
    the sensors (None: all) and whether the window can hold anything at all."""

    window: Window
    limit: int
    sensor_ids: frozenset[int] | None
    empty: bool


def history_query(request: web.Request, default_limit: int, max_limit: int) -> HistoryQuery:
    """startTime, endTime, before, historyLimit and sensorId of a history request, each checked."""
    found = window(request)
    limit = history_limit(request, default_limit, max_limit)
    sensor_ids = sensor_filter(request)
    before = _platform_time_param(request, BEFORE)
    if before is None:
        return HistoryQuery(found, limit, sensor_ids, False)
    if found.start is not None and found.start >= before:
        raise ApiError(400, f"before ({before:%Y-%m-%d %H:%M:%S}) must be after startTime"
                            f" ({found.start:%Y-%m-%d %H:%M:%S})")  # fmt: skip
    if before == _FIRST_MOMENT:  # nothing is older than the first moment readings can have
        return HistoryQuery(found, limit, sensor_ids, True)
    end = before - ONE_SECOND if found.end is None else min(found.end, before - ONE_SECOND)
    return HistoryQuery(Window(found.start, end), limit, sensor_ids, False)


def sensor_filter(request: web.Request) -> frozenset[int] | None:
    """sensorId, repeatable: the sensors asked for, or None when the parameter is absent."""
    given = ids(request, SENSOR_FILTER)
    return None if given is None else frozenset(given)


def answer_format(request: web.Request) -> str:
    """csv or json: ?format= when given (anything else is a 400), else what the Accept header prefers."""
    text = request.query.get(FORMAT.name)
    if text is not None:
        if text not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(FORMATS)}, got {text!r}")
        return text
    return "csv" if prefers(request.headers.get("Accept", ""), "text/csv", "application/json") else "json"


def prefers(accept: str, media: str, other: str) -> bool:
    """The Accept header gives `media` (type/subtype) a higher q value than `other`."""
    return _quality(accept, *media.split("/", 1)) > _quality(accept, *other.split("/", 1))


def q_value(options: list[str]) -> float:
    """The `q` parameter among the options of one item of an Accept or Accept-Encoding header (1 without one;
    0 when it is not a number from 0 to 1, NaN included)."""
    q = 1.0
    for option in options:
        name, _, value = option.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                q = 0.0
            q = q if 0.0 <= q <= 1.0 else 0.0
    return q


def _quality(accept: str, kind: str, sub: str) -> float:
    """The q value an Accept header gives a media type (the most specific range that matches; 0 if none)."""
    best, quality = -1, 0.0
    for item in accept.split(","):
        media, *options = item.strip().split(";")
        media_kind, _, media_sub = media.strip().lower().partition("/")
        if media_kind == kind and media_sub == sub:
            rank = 2
        elif media_kind == kind and media_sub == "*":
            rank = 1
        elif media_kind == "*" and media_sub == "*":
            rank = 0
        else:
            continue
        q = q_value(options)
        if rank > best:
            best, quality = rank, q
    return quality


def day(request: web.Request, param: Param = DAY) -> str | None:
    """day=YYYY-MM-DD, a real date (exactly the document's pattern)."""
    text = request.query.get(param.name)
    if text is None:
        return None
    if not _DAY_RE.fullmatch(text):
        raise ApiError(400, f"day must be a real date YYYY-MM-DD (years {MIN_YEAR} to {MAX_YEAR}), got {text!r}")
    return text


def event_type(request: web.Request) -> str | None:
    """type=push|sync|sync_failed."""
    text = request.query.get(EVENT_TYPE.name)
    if text is not None and text not in EVENT_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(sorted(EVENT_TYPES))}, got {text!r}")
    return text
