"""Events and their one-line JSON encoding in the daily log files."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

FORMAT_VERSION = 1
ZERO_HASH = "0" * 64

PUSH = "push"
SYNC = "sync"
SYNC_FAILED = "sync_failed"
BACKFILL = "backfill"  # one answered page of the vendor's sensor history
BACKFILL_FAILED = "backfill_failed"  # a history call the vendor refused or did not answer
LEGACY = "legacy"  # a row or a log line of the original Flask service, imported (tlink-push import-legacy)
EVENT_TYPES = frozenset({PUSH, SYNC, SYNC_FAILED, BACKFILL, BACKFILL_FAILED, LEGACY})


class EventLogError(Exception):
    """Root error of the eventlog package."""


class BadLine(EventLogError):
    """A log line that is not a valid event."""


@dataclass(frozen=True, slots=True)
class Event:
    """One immutable fact: a push body, a synced device object or a history page, as received.

    `request`: what the service asked the vendor for to get `body` (a backfill's sensor,
    window and paging state); None for what the vendor sent by itself.
    `source`: where an imported `body` was read (a legacy event's table and key, or file and
    line); None for everything the service received itself.
    """

    id: str
    type: str
    received_at: datetime
    device_id: int
    user_id: int
    body: dict[str, Any]
    request: dict[str, Any] | None = None
    source: dict[str, Any] | None = None

    @property
    def day(self) -> str:
        """The UTC day of receipt, which names the daily file."""
        return self.received_at.strftime("%Y-%m-%d")


class _Entropy:
    """Random bytes from the OS, fetched 4 KiB at a time rather than with a system call per id."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._pool):
            self._pool, self._at = os.urandom(4096), 0
        chunk = self._pool[self._at : self._at + size]
        self._at += size
        return chunk


_entropy = _Entropy()


_RAND_A = (1 << 12) - 1
_RAND_B = (1 << 62) - 1
_last_id: list[int] = [-1, 0]  # (millisecond, the 74 random bits) of the id made last


def new_event_id(now_ms: int | None = None) -> str:
    """A UUIDv7: time-ordered, so ids sort by the time they were made.

    Within one millisecond the ids of a process also sort in the order they were made: the
    next one is the previous one plus one (RFC 9562 section 6.2, method 2), so a device's
    log, and what the live stream sends, is in id order (service/http/stream.py).
    """
    ms = (int(time.time() * 1000) if now_ms is None else now_ms) & ((1 << 48) - 1)
    rand = int.from_bytes(_entropy.take(10), "big") >> 6  # 74 random bits
    if ms == _last_id[0] and _last_id[1] < (1 << 74) - 1:
        rand = _last_id[1] + 1
    _last_id[0], _last_id[1] = ms, rand
    value = ms << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & _RAND_A) << 64
    value |= 0b10 << 62
    value |= rand & _RAND_B
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utc_now() -> datetime:
    """Now as an aware UTC datetime (millisecond precision is what lines keep)."""
    return datetime.now(UTC)


def format_instant(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and Z, as `receivedAt` is written."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_instant(text: str) -> datetime:
    """Inverse of format_instant (accepts any ISO 8601 instant with Z)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def line_hash(line: bytes) -> str:
    """Hex SHA-256 of a line's exact bytes without its newline."""
    return hashlib.sha256(line).hexdigest()


def body_digest(body: dict[str, Any]) -> str:
    """Identity of a body for duplicate detection: insensitive to key order and spacing."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def encode_line(event: Event, prev: str) -> bytes:
    """The event as one JSON line (without the newline), chained to `prev`; `request` and `source` only
    when there is one."""
    doc = {
        "v": FORMAT_VERSION,
        "id": event.id,
        "type": event.type,
        "receivedAt": format_instant(event.received_at),
        "deviceId": event.device_id,
        "userId": event.user_id,
        "prev": prev,
        "body": event.body,
    }
    if event.request is not None:
        doc["request"] = event.request
    if event.source is not None:
        doc["source"] = event.source
    return orjson.dumps(doc)


def decode_line(line: bytes) -> tuple[Event, str]:
    """Parse one line back into its event and its `prev` hash; BadLine if it is not one."""
    try:
        doc = orjson.loads(line)
        event = Event(
            id=str(doc["id"]),
            type=str(doc["type"]),
            received_at=parse_instant(doc["receivedAt"]),
            device_id=_int(doc["deviceId"]),
            user_id=_int(doc["userId"]),
            body=doc["body"],
            request=doc.get("request"),
            source=doc.get("source"),
        )
        prev = doc["prev"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadLine(f"not a valid event line: {exc}") from exc
    if not isinstance(event.body, dict) or not isinstance(prev, str) or len(prev) != 64:
        raise BadLine("not a valid event line: body must be an object and prev a sha256")
    if event.request is not None and not isinstance(event.request, dict):
        raise BadLine("not a valid event line: request must be an object")
    if event.source is not None and not isinstance(event.source, dict):
        raise BadLine("not a valid event line: source must be an object")
    return event, prev


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer id, got {value!r}")
    return value
