"""What each device's newest `sync` event said, so that an unchanged device object is not logged again.

The log is the source of truth: the first time a device is synced after start-up, its
log files are read backward (newest day first, last line first) up to its newest
`sync` line, which is usually near the tail. From then on the answer is kept in memory
and updated on every `sync` event appended. The database is never asked: it is derived
from the log and may be down.

Only `sync` events count. A `push` or a `sync_failed` event between two syncs changes
nothing: the device object to compare with is still the body of the newest `sync`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from eventlog.backward import newest_lines
from eventlog.events import SYNC, body_digest
from eventlog.files import LogEnd

log = logging.getLogger("tlink.sync")

# How encode_line writes the type of a sync event; a cheap filter before a line is parsed.
_SYNC_TYPE = b'"type":"' + SYNC.encode() + b'"'


@dataclass(frozen=True, slots=True)
class LastSync:
    """The newest `sync` event of a device: who it was recorded for, and its body's digest."""

    user_id: int
    digest: str


def newest_sync(root: Path, device_id: int, durable_end: LogEnd | None = None) -> LastSync | None:
    """The device's newest `sync` event in its log files (None: it has none), read from the end.

    Lines that are not valid events are passed over; `tlink-push verify` reports them.
    """
    for line in newest_lines(root, device_id, durable_end=durable_end):
        if _SYNC_TYPE not in line.raw:
            continue
        try:
            doc = orjson.loads(line.raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or doc.get("type") != SYNC:
            continue
        body, user_id = doc.get("body"), doc.get("userId")
        if isinstance(body, dict) and type(user_id) is int:
            return LastSync(user_id, body_digest(body))
    return None


class LastSyncs:
    """The newest `sync` event per device, read lazily from the log and then kept current.

    Only the sync appends `sync` events, one run at a time, and it tells this object of
    every one (`appended`), so the memory stays equal to the log. When an append ended
    in an unknown state, `forget` makes the next look-up read the log again.
    """

    def __init__(self, root: Path, durable_end: Callable[[int], LogEnd] | None = None) -> None:
        self.root = root
        self._durable_end = durable_end
        self._known: dict[int, LastSync | None] = {}

    async def get(self, device_id: int) -> LastSync | None:
        """The device's newest `sync` event (None: none, or its log could not be read)."""
        if device_id in self._known:
            return self._known[device_id]
        end = self._durable_end(device_id) if self._durable_end is not None else None
        try:
            found = await asyncio.to_thread(newest_sync, self.root, device_id, end)
        except OSError as exc:
            log.warning("newest sync event of device %d could not be read, the device is logged: %s", device_id, exc)
            return None  # not remembered: the next run tries again
        self._known[device_id] = found
        return found

    def appended(self, device_id: int, user_id: int, digest: str) -> None:
        """A `sync` event of the device was appended (and is durable)."""
        self._known[device_id] = LastSync(user_id, digest)

    def forget(self, device_id: int) -> None:
        """Read the device's log again at the next look-up."""
        self._known.pop(device_id, None)
