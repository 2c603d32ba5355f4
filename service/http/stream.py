"""GET /api/users/{userId}/stream: the projected events of a user's devices as Server-Sent Events.

Each event the read models apply (service.stream.StreamHub, fed by the projector after
each commit) becomes one SSE message: `event: reading` for an event with readings (a
push, a sync, a backfill page), `event: device` for a sync that changes the device's
names or units, `id:` the event id. A client that comes back with `Last-Event-ID` (or
`?lastEventId=`) first gets every later event of its devices read back from the log
files, up to what the read models held when it subscribed, then the live ones: the
subscription is taken first, so nothing is missed or repeated across the switch.
See docs/stream.md.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from eventlog.events import SYNC, BadLine, Event, decode_line, utc_now
from eventlog.files import device_days, log_path, read_lines
from eventlog.retention import cutoff_day
from projections import views
from projections.changes import Placed
from projections.readings import Reading, read_event
from projections.recorder import Position
from service.http import api, query
from service.http.keys import SERVICES, SETTINGS, STREAM_HUB
from service.http.middleware.errors import ApiError
from service.stream import Subscription

STREAM_PATH = "/api/users/{userId}/stream"
EVENT_STREAM = "text/event-stream"
HEARTBEAT = b": heartbeat\n\n"
_UUID7_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_LINE_PREFIX = b'{"v":1,"id":"'  # eventlog.events.encode_line: a line's id is at a fixed place
_ID_END = len(_LINE_PREFIX) + 36
_WRITE_BATCH = 512  # backlog messages per write

# A device's names and units as a sync gives them: (deviceName, ((sensorId, sensorName, unit), ...)).
Meta = tuple[Any, tuple[tuple[Any, Any, Any], ...]]


# ---------------------------------------------------------------- the messages


def _meta_of(body: dict[str, Any]) -> Meta:
    sensors = [s for s in body.get("sensorsList") or [] if isinstance(s, dict)]
    named = sorted(((s.get("id"), s.get("sensorName"), s.get("unit")) for s in sensors), key=repr)
    return body.get("deviceName"), tuple(named)


def _reading(reading: Reading, zone: tzinfo | None) -> dict[str, Any]:
    return {"sensorId": reading.sensor_id, **api.reading_part(reading, zone)}


def event_text(
    event: Event, readings: list[Reading] | None, seen: dict[int, Meta], zone: tzinfo | None = None
) -> bytes:
    """The SSE text of one event (b"" when it shows nothing); `seen`: each device's names and units as of
    the last sync looked at, updated here.

    A sync "changes" its device when its deviceName, or the set of its sensors with each one's
    sensorName and unit, differs from those of the device's previous sync in `seen` (the first
    sync of a device counts as a change). A sync that changes it and has readings gives two
    messages, `device` then `reading`; only the last carries the `id:`, so a client that
    resumes never skips the second.
    """
    parts = []
    base = {"deviceId": event.device_id, "eventId": event.id, "type": event.type}
    if event.type == SYNC:
        meta = _meta_of(event.body)
        if seen.get(event.device_id) != meta:
            seen[event.device_id] = meta
            sensors = [{"sensorId": i, "sensorName": n, "unit": u} for i, n, u in meta[1]]
            parts.append((b"device", {**base, "deviceName": meta[0], "sensors": sensors}))
    if readings is None:
        readings = read_event(event).readings
    if readings:
        parts.append((b"reading", {**base, "readings": [_reading(r, zone) for r in readings]}))
    if not parts:
        return b""
    out = []
    for n, (kind, data) in enumerate(parts):
        id_line = b"id: " + event.id.encode() + b"\n" if n == len(parts) - 1 else b""
        out.append(id_line + b"event: " + kind + b"\ndata: " + orjson.dumps(data) + b"\n\n")
    return b"".join(out)


class LiveText:
    """The hub's formatter: each applied event's text, device changes judged against every sync applied."""

    def __init__(self, zone: tzinfo | None = None) -> None:
        self._seen: dict[int, Meta] = {}
        self._zone = zone  # reading times with this UTC offset (TLINK_TIMEZONE), as the read API gives them

    def __call__(self, placed: Placed) -> bytes:
        readings = None if placed.parsed is None else placed.parsed.readings
        return event_text(placed.event, readings, self._seen, self._zone)

    def note(self, placed: Placed) -> None:
        """Remember a sync's names and units without making its text (nobody watches its user)."""
        self._seen[placed.event.device_id] = _meta_of(placed.event.body)


# ---------------------------------------------------------------- resuming from the log


def parse_last_event_id(text: str, log_age: int, today: str | None = None) -> str:
    """A Last-Event-ID: a UUIDv7 (400 otherwise) of a day the log still keeps (410 otherwise)."""
    value = text.lower()
    if not _UUID7_RE.match(value):
        raise ApiError(400, f"Last-Event-ID must be an event id (a UUIDv7), got {text[:60]!r}")
    ms = int(value[:8] + value[9:13], 16)
    day = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")
    cutoff = cutoff_day(datetime.fromisoformat(today).date() if today else utc_now().date(), log_age)
    if day < cutoff:
        raise ApiError(
            410, f"event {value} is of {day}, older than the log keeps (LOG_AGE: files before {cutoff} are deleted);"
            " reconnect without Last-Event-ID"
        )  # fmt: skip
    return value


def _id_day(event_id: str) -> str:
    return datetime.fromtimestamp(int(event_id[:8] + event_id[9:13], 16) / 1000, UTC).strftime("%Y-%m-%d")


def read_backlog(
    root: Path,
    devices: Iterable[int],
    positions: dict[int, Position],
    after: str,
    user_id: int,
    zone: tzinfo | None = None,
) -> list[tuple[str, bytes]]:
    """In a thread: (id, text) of every event of `user_id` on these devices with an id after `after`,
    up to each device's position (what the read models held), in id order."""
    first_day = _id_day(after)
    found: list[tuple[str, bytes]] = []
    for device_id in devices:
        pos = positions.get(device_id)
        if pos is None:
            continue
        seen: dict[int, Meta] = {}
        for day in device_days(root, device_id):
            if day < first_day or day > pos.day:
                continue
            try:
                for line in read_lines(log_path(root, device_id, day), 0, 1, day):
                    if day == pos.day and line.end > pos.byte_count:
                        break
                    _backlog_line(line.raw, after, user_id, seen, found, zone)
            except FileNotFoundError:
                continue  # deleted by retention meanwhile
    found.sort(key=lambda item: item[0])
    return found


def _backlog_line(
    raw: bytes, after: str, user_id: int, seen: dict[int, Meta], found: list[tuple[str, bytes]], zone: tzinfo | None
) -> None:
    if raw.startswith(_LINE_PREFIX) and raw[:_ID_END].decode("ascii", "replace")[len(_LINE_PREFIX) :] <= after:
        if b'"type":"sync"' not in raw[:_ID_END + 40]:
            return  # already sent; only syncs matter before it (what the device's names were)
    try:
        event, _ = decode_line(raw)
    except BadLine:
        return  # the projection stops at such a line: nothing after it is applied either
    if event.id <= after:
        if event.type == SYNC:
            seen[event.device_id] = _meta_of(event.body)
        return
    text = event_text(event, None, seen, zone)
    if text and event.user_id == user_id:
        found.append((event.id, text))


# ---------------------------------------------------------------- the handler


def _last_event_id(request: web.Request, log_age: int) -> str | None:
    """The id to resume after: the Last-Event-ID header (what a browser sends when it reconnects)
    wins over ?lastEventId= (which stays in the URL it reconnects to)."""
    headers = request.headers.getall("Last-Event-ID", [])
    if len(headers) > 1:
        raise ApiError(400, "more than one Last-Event-ID header")
    text = headers[0] if headers and headers[0].strip() else request.query.get(query.LAST_EVENT_ID.name)
    return None if text is None else parse_last_event_id(text, log_age)


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /api/users/{userId}/stream"""
    settings, services, hub = request.app[SETTINGS], request.app[SERVICES], request.app[STREAM_HUB]
    query.path_id(request, query.USER_ID)
    devices = query.ids(request, query.STREAM_DEVICES)
    after = _last_event_id(request, settings.LOG_AGE)
    user = await api.owner(request)
    for device_id in devices or ():
        await api.owned_device(request, user, device_id)
    sub, positions = hub.subscribe(user.tlink_user_id, devices)
    try:
        backlog: list[tuple[str, bytes]] = []
        if after is not None:
            owned = [d for _, d in await views.owned_devices(services.db, [user.tlink_user_id])]
            wanted = [d for d in owned if devices is None or d in devices]
            backlog = await asyncio.get_running_loop().run_in_executor(
                None, read_backlog, settings.SYNC_LOG_DIR, wanted, positions, after, user.tlink_user_id,
                api.answer_zone(settings),
            )
        response = web.StreamResponse(
            headers={"Content-Type": EVENT_STREAM, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        try:
            await _send(request, response, sub, backlog, settings.STREAM_HEARTBEAT_SECONDS)
        except ConnectionError:
            pass  # the client went away: nothing more to send
        return response
    finally:
        hub.unsubscribe(sub)


async def _send(
    request: web.Request, response: web.StreamResponse, sub: Subscription, backlog: list[tuple[str, bytes]],
    heartbeat: float,
) -> None:  # fmt: skip
    stats = request.app[STREAM_HUB].stats
    last_sent = None
    for start in range(0, len(backlog), _WRITE_BATCH):
        part = backlog[start : start + _WRITE_BATCH]
        await response.write(b"".join(text for _, text in part))
        stats.events_sent += len(part)
        last_sent = part[-1][0]
    sent = {event_id for event_id, _ in backlog}  # a live message already sent from the log is not sent again
    await response.write(b": stream open\n\n")
    beat = _Heartbeat(sub, heartbeat)  # one timer per stream, not one per message
    try:
        while not sub.closed:
            if sub.overflowed:
                data = {"error": "this client fell behind the live events (STREAM_QUEUE_EVENTS); reconnect with"
                                 " Last-Event-ID to resume", "lastEventId": last_sent}  # fmt: skip
                await response.write(b"event: overflow\ndata: " + orjson.dumps(data) + b"\n\n")
                return
            items = sub.take()
            if sent:
                items = [item for item in items if item[0] not in sent]
            if items:
                await response.write(b"".join(text for _, text in items))
                stats.events_sent += len(items)
                last_sent = items[-1][0]
                beat.wrote()
                continue
            if beat.due:
                await response.write(HEARTBEAT)
                beat.wrote()
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await sub.wakeup.wait()
    finally:
        beat.cancel()


class _Heartbeat:
    """Wakes a stream's handler when it has written nothing for `seconds`: one timer for the stream's life."""

    def __init__(self, sub: Subscription, seconds: float) -> None:
        self._sub, self._seconds = sub, seconds
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self.due = False
        self._timer = self._loop.call_later(seconds, self._check)

    def wrote(self) -> None:
        """Something was written: the silence starts again."""
        self._last, self.due = self._loop.time(), False

    def _check(self) -> None:
        silent = self._loop.time() - self._last
        if silent >= self._seconds * 0.999:
            self.due = True
            self._sub.wakeup.set()
            silent = 0.0
        self._timer = self._loop.call_later(self._seconds - silent, self._check)

    def cancel(self) -> None:
        """Stop the timer (the stream ends)."""
        self._timer.cancel()
