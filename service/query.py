"""Query and path parameters of the read API: each declared once, parsed strictly.

A malformed value is a 400 naming the parameter, never a silent default. The same
declarations describe the parameters in the OpenAPI document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from eventlog import readings
from eventlog.events import EVENT_TYPES
from eventlog.history import Window
from eventlog.readings import MAX_ID, InvalidBody, parse_platform_time
from service.errors import ApiError

_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$"


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter as the OpenAPI document states it."""

    name: str
    where: str  # "path" or "query"
    schema: dict[str, Any]
    description: str
    required: bool = field(default=False)


USER_ID = Param("userId", "path", {"type": "integer", "minimum": 1}, "TLINK user id", True)
DEVICE_ID = Param("deviceId", "path", {"type": "integer", "minimum": 1}, "TLINK device id", True)
DEVICE_FILTER = Param("deviceId", "query", {"type": "integer", "minimum": 1}, "only this device (404 if not theirs)")
START_TIME = Param(
    "startTime", "query", {"type": "string", "pattern": _TIME_PATTERN},
    "earliest reading time, inclusive: YYYY-MM-DD HH:MM:SS (or with T), platform time",
)  # fmt: skip
END_TIME = Param(
    "endTime", "query", {"type": "string", "pattern": _TIME_PATTERN},
    "latest reading time, inclusive: YYYY-MM-DD HH:MM:SS (or with T), platform time",
)  # fmt: skip
PAGE = Param("page", "query", {"type": "integer", "minimum": 1, "default": 1}, "1-based page number")
PAGE_SIZE = Param("pageSize", "query", {"type": "integer", "minimum": 1}, "items per page; larger values are capped")
HISTORY_LIMIT = Param("historyLimit", "query", {"type": "integer", "minimum": 0}, "readings per sensor, newest first")
DAY = Param(
    "day", "query", {"type": "string", "pattern": _DAY_RE.pattern}, "only this UTC day's file (YYYY-MM-DD)"
)
EVENT_TYPE = Param("type", "query", {"type": "string", "enum": sorted(EVENT_TYPES)}, "only events of this type")


def path_id(request: web.Request, param: Param) -> int:
    """A positive integer id from the path."""
    return _positive(param.name, request.match_info[param.name])


def optional_id(request: web.Request, param: Param) -> int | None:
    """A positive integer id from the query, if given."""
    text = request.query.get(param.name)
    return None if text is None else _positive(param.name, text)


def _positive(name: str, text: str) -> int:
    value = _integer(name, text)
    if not 0 < value <= MAX_ID:
        raise ApiError(400, f"{name} must be a positive integer, got {text!r}")
    return value


def _integer(name: str, text: str) -> int:
    value = readings.integer_text(text, signed=True)  # ASCII digits only, no whitespace: the rule of push bodies
    if value is None:
        raise ApiError(400, f"{name} must be an integer of at most 19 ASCII digits, got {text!r}")
    return value


def integer(request: web.Request, param: Param, default: int, minimum: int) -> int:
    """An integer from the query (default when absent), at least `minimum`."""
    text = request.query.get(param.name)
    if text is None:
        return default
    value = _integer(param.name, text)
    if value < minimum:
        raise ApiError(400, f"{param.name} must be at least {minimum}, got {value}")
    return value


def page(request: web.Request, default_size: int, max_size: int) -> tuple[int, int]:
    """(page, pageSize): pageSize over the maximum is capped to it."""
    return integer(request, PAGE, 1, 1), min(integer(request, PAGE_SIZE, default_size, 1), max_size)


def history_limit(request: web.Request, default: int, maximum: int) -> int:
    """historyLimit: 400 over the maximum (a cap would silently cut a history short)."""
    value = integer(request, HISTORY_LIMIT, min(default, maximum), 0)
    if value > maximum:
        raise ApiError(400, f"historyLimit must be at most {maximum} (MAX_HISTORY_LIMIT), got {value}")
    return value


def _time(request: web.Request, param: Param) -> datetime | None:
    text = request.query.get(param.name)
    if text is None:
        return None
    try:
        return parse_platform_time(text.strip(), param.name)
    except InvalidBody as exc:
        raise ApiError(400, str(exc)) from None


def window(request: web.Request) -> Window:
    """The [startTime, endTime] window; 400 if start is after end."""
    start, end = _time(request, START_TIME), _time(request, END_TIME)
    if start is not None and end is not None and start > end:
        raise ApiError(400, f"startTime ({start:%Y-%m-%d %H:%M:%S}) is after endTime ({end:%Y-%m-%d %H:%M:%S})")
    return Window(start, end)


def day(request: web.Request) -> str | None:
    """day=YYYY-MM-DD, a real date."""
    text = request.query.get(DAY.name)
    if text is None:
        return None
    try:
        if not _DAY_RE.match(text):
            raise ValueError
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise ApiError(400, f"day must be a date YYYY-MM-DD, got {text!r}") from None
    return text


def event_type(request: web.Request) -> str | None:
    """type=push|sync|sync_failed."""
    text = request.query.get(EVENT_TYPE.name)
    if text is not None and text not in EVENT_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(sorted(EVENT_TYPES))}, got {text!r}")
    return text
