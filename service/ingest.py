"""Turning a push body or a synced device into a durable event and projected rows."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from eventlog.events import PUSH, SYNC, Event, body_digest
from eventlog.store import Appended, LogStore
from projections.db import DatabaseError
from projections.projector import Projector, Staged
from projections.readings import InvalidBody, Parsed, Reading, parse_id, parse_push
from projections.recorder import Recorder

log = logging.getLogger("tlink.ingest")

PushKey = tuple[int, str]
STORED_ID_TRIES = 15


@dataclass(frozen=True, slots=True)
class PushResult:
    """The answer to one push."""

    event_id: str | None
    stored_readings: int
    duplicate: bool
    projected: bool


@dataclass(frozen=True, slots=True)
class Published:
    """What the bus said of an event (cluster mode): the stored event's id (an earlier one's for a
    duplicate, None if it is no longer known), and whether this node's read models show it."""

    event_id: str | None
    duplicate: bool
    projected: bool


class EventBus(Protocol):
    """Where a cluster node's events go instead of this node's log (service.cluster.node.Node)."""

    async def publish(self, event: Event, key: str) -> Published:
        """Put the event on the bus with `key` as its duplicate key (LogUnavailable if it is not taken)."""
        ...


class KnownPushes:
    """Which push bodies are already stored.

    Identical bodies have identical `time`s, so a push newer than every push stored for
    its device cannot be a redelivery: that is the common case, answered from memory
    (the newest `time` per device, read once from the database, then kept up to date).
    Otherwise a bounded memory of recent pushes, then one batched query.
    """

    def __init__(self, recorder: Recorder, caught_up: Callable[[int], bool], capacity: int = 100_000) -> None:
        self._recorder = recorder
        self._caught_up = caught_up
        self._recent: OrderedDict[PushKey, str] = OrderedDict()
        self._capacity = capacity
        self._newest: dict[int, datetime] = {}  # device -> newest `time` stored (what we know of)
        self._bounded: set[int] = set()  # devices whose newest stored `time` is known
        self._pending: dict[PushKey, tuple[datetime, asyncio.Future[str | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def remember(self, key: PushKey, event_id: str, sent: datetime) -> None:
        """Record a stored push."""
        self._recent[key] = event_id
        if len(self._recent) > self._capacity:
            self._recent.popitem(last=False)
        newest = self._newest.get(key[0])
        if newest is None or sent > newest:
            self._newest[key[0]] = sent

    def forget(self, device_id: int) -> None:
        """Learn the device's newest stored `time` again (another node may have stored pushes since)."""
        self._bounded.discard(device_id)
        self._newest.pop(device_id, None)

    def _newer_than_stored(self, device_id: int, sent: datetime) -> bool:
        if device_id not in self._bounded:
            return False
        newest = self._newest.get(device_id)
        return newest is None or sent > newest

    async def lookup(self, key: PushKey, sent: datetime) -> str | None:
        """The stored event id of an identical push, or None (also when the database is down)."""
        if key in self._recent:
            return self._recent[key]
        if self._newer_than_stored(key[0], sent):
            return None
        pending = self._pending.get(key)
        if pending is None:
            pending = (sent, asyncio.get_running_loop().create_future())
            self._pending[key] = pending
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._drain())
        return await asyncio.shield(pending[1])

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                await self._learn_bounds({device_id for device_id, _ in batch})
                asked = [key for key, (sent, _) in batch.items() if not self._newer_than_stored(key[0], sent)]
                found = await self._recorder.known_pushes(asked) if asked else {}
            except DatabaseError as exc:
                log.debug("duplicate check skipped: %s", exc)
                found = {}
            for key, (_, future) in batch.items():
                if not future.done():
                    future.set_result(found.get(key))

    async def _learn_bounds(self, device_ids: set[int]) -> None:
        """Read the newest stored `time` of devices whose database rows are complete."""
        wanted = {d for d in device_ids if d not in self._bounded and self._caught_up(d)}
        if not wanted:
            return
        stored = await self._recorder.push_times(wanted)
        for device_id in wanted:
            newest, known = stored.get(device_id), self._newest.get(device_id)
            if newest is not None and (known is None or newest > known):
                self._newest[device_id] = newest
            self._bounded.add(device_id)


class DeviceSensors:
    """The distinct sensor ids of each device, to keep it within MAX_SENSORS_PER_DEVICE.

    The sensors read model has one row per (device, sensor). The ids of a device are read
    from it once, on the device's first push whose rows are complete (the projector has
    caught up with the device), and kept up to date with every push admitted since. Until
    then (database down, projection behind) the count is of the sensors this process has
    admitted for the device: a lower bound, so a push is never refused for sensors it
    cannot see, and the cap holds from the first push after the database answers.
    """

    def __init__(self, recorder: Recorder, caught_up: Callable[[int], bool], limit: int) -> None:
        self._recorder = recorder
        self._caught_up = caught_up
        self.limit = limit
        self._known: dict[int, set[int]] = {}
        self._loaded: set[int] = set()

    async def admit(self, device_id: int, sensor_ids: set[int]) -> set[int]:
        """Count a push's sensors in (returning those new to the device), or InvalidBody naming
        the cap when the device would have more than `limit` sensors."""
        known = self._known.get(device_id)
        if known is not None and device_id in self._loaded and sensor_ids <= known:
            return set()  # the common case: nothing new
        if device_id not in self._loaded:
            await self._load(device_id)
        known = self._known.setdefault(device_id, set())
        new = sensor_ids - known  # no await from here on: the check and the count are one step
        if len(known) + len(new) > self.limit:
            raise InvalidBody(
                f"sensorsDates: device {device_id} would have {len(known) + len(new)} sensors (sensorsId) with this"
                f" push, {len(new)} of them new: at most {self.limit} per device (MAX_SENSORS_PER_DEVICE)"
            )
        known |= new
        return new

    def withdraw(self, device_id: int, sensor_ids: set[int]) -> None:
        """Uncount sensors `admit` counted in for a push that was not stored after all."""
        self._known.get(device_id, set()).difference_update(sensor_ids)

    def forget(self, device_id: int) -> None:
        """Read the device's sensors from the database again (a sync may have added some)."""
        self._loaded.discard(device_id)

    async def _load(self, device_id: int) -> None:
        if not self._caught_up(device_id):
            return
        try:
            stored = await self._recorder.sensor_ids(device_id)
        except DatabaseError as exc:
            log.debug("sensor count of device %s not read: %s", device_id, exc)
            return
        self._known.setdefault(device_id, set()).update(stored)
        self._loaded.add(device_id)


class Ingestor:
    """The write side: check, append durably, project, answer.

    With a `bus` (cluster mode), an event is published instead, and written by the node that
    holds its device's partition (service.cluster.node).
    """

    def __init__(
        self,
        store: LogStore,
        projector: Projector,
        recorder: Recorder,
        max_samples_per_push: int = 1000,
        max_sensors_per_device: int = 1000,
        bus: EventBus | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.recorder = recorder
        self.projector = projector
        self.known = KnownPushes(recorder, projector.caught_up)
        self.max_samples_per_push = max_samples_per_push
        self.sensors = DeviceSensors(recorder, projector.caught_up, max_sensors_per_device)
        self._inflight: dict[PushKey, asyncio.Future[str | None]] = {}

    async def push(self, body: dict[str, Any]) -> PushResult:
        """Store one push body (InvalidBody if it cannot be accepted)."""
        entries = body.get("sensorsDates")
        if isinstance(entries, list) and len(entries) > self.max_samples_per_push:
            raise InvalidBody(
                f"sensorsDates has {len(entries)} samples: at most {self.max_samples_per_push} per push"
                " (MAX_SAMPLES_PER_PUSH)"
            )
        parsed = parse_push(body)
        key = (parsed.device_id, body_digest(body))
        while (earlier := self._inflight.get(key)) is not None:  # the same body is being stored now
            event_id = await asyncio.shield(earlier)
            if event_id is not None:
                return PushResult(event_id, 0, True, True)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future  # no await since the check above: one writer per body
        try:
            stored = await self.known.lookup(key, parsed.sent)
            if stored is not None:
                future.set_result(stored)
                return PushResult(stored, 0, True, True)
            new_sensors = await self.sensors.admit(parsed.device_id, {r.sensor_id for r in parsed.readings})
            event = self.store.new_event(PUSH, parsed.device_id, parsed.user_id, body)
            if self.bus is not None:
                try:
                    sent = await self.bus.publish(event, f"{key[0]}:{key[1]}")
                except BaseException:
                    self.sensors.withdraw(parsed.device_id, new_sensors)
                    raise
                stored_id = sent.event_id
                if sent.duplicate and stored_id is None:
                    stored_id = await self._stored_id(key)
                if stored_id is not None:
                    self.known.remember(key, stored_id, parsed.sent)
                future.set_result(stored_id)
                count = 0 if sent.duplicate else len(parsed.readings)
                return PushResult(stored_id, count, sent.duplicate, sent.projected)
            try:
                known = Parsed(parsed.readings, key[1], parsed.sent)
                appended, projection = await append_and_project(self.store, self.projector, event, known)
            except BaseException:
                self.sensors.withdraw(parsed.device_id, new_sensors)
                raise
            self.known.remember(key, appended.event.id, parsed.sent)
            future.set_result(appended.event.id)
        finally:
            if not future.done():
                future.set_result(None)
            del self._inflight[key]
        return PushResult(appended.event.id, len(parsed.readings), False, await projection)

    async def _stored_id(self, key: PushKey) -> str | None:
        """The event id of a push the bus found a duplicate of but no longer holds: it is written, and in
        the events table once projected (None if it is not within a few seconds)."""
        for _ in range(STORED_ID_TRIES):
            try:
                found = (await self.recorder.known_pushes([key])).get(key)
            except DatabaseError:
                found = None
            if found is not None:
                return found
            await asyncio.sleep(0.2)
        return None

    def forget(self, device_id: int) -> None:
        """Read what is stored of the device from the database again (it was another node's)."""
        self.known.forget(device_id)
        self.sensors.forget(device_id)

    async def sync_device(
        self, user_id: int, device: dict[str, Any], readings: list[Reading] | None = None
    ) -> Appended | None:
        """Store one device object pulled from TLINK (with its `readings`, if already read) and project it."""
        device_id = parse_id(device["id"], "id")
        self.sensors.forget(device_id)  # its sensors list may name new sensors: count them again
        return await self.record(SYNC, device_id, user_id, device, readings)

    async def record(
        self,
        type_: str,
        device_id: int,
        user_id: int,
        body: dict[str, Any],
        readings: list[Reading] | None = None,
        request: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> Appended | None:
        """Store an event of another type (a failed sync, a backfill page, an imported row) and project it;
        `readings`, when given, are what the body carries, already read; `request` is what was asked to get
        `body`, `source` where an imported `body` was read. Where it landed; None in cluster mode, where it is
        published (and written by the device's node)."""
        event = self.store.new_event(type_, device_id, user_id, body, request, source)
        if self.bus is not None:
            await self.bus.publish(event, event.id)
            return None
        known = None if readings is None else Parsed(readings)
        appended, projection = await append_and_project(self.store, self.projector, event, known)
        await projection
        return appended

async def append_and_project(
    store: LogStore, projector: Projector, event: Event, parsed: Parsed | None = None
) -> tuple[Appended, asyncio.Future[bool]]:
    """Append an event durably, its projection started as soon as its line has its place in the log
    (so the database's work overlaps the fsync); (where it landed, whether it was projected).

    The one path of every event into the log and the read models (`parsed`: what the
    caller already read from the body, None: the projector reads it).
    """
    queued = store.queue(event)
    placed = await queued.placed
    projection = projector.submit(Staged(placed, parsed, queued.durable))
    return await queued.durable, projection
