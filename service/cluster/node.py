"""A cluster node: what its ingest publishes, and how it writes the partitions whose lease it holds.

Ingest (`publish`, the ingestor's bus): the event, with the id and time of receipt given
here, goes to its partition's subject with `Nats-Msg-Id` = the caller's key (device and body
digest for a push: an identical redelivery within the window is a duplicate whichever node
receives it). The push is answered once the stream has it on its replicas; when this node
writes the device, after the local projection too (`projected`).

Writer (one task per partition held): a consumer of its own delivers the partition's messages
in stream order from just after the recorded progress (`Bus.written`); each fetched batch goes
through the one path of every event (`append_and_project`), and once all its lines are on disk
the progress moves past it (and the stream drops those messages). Before that, the permanent
duplicate rules: a message an earlier writer may have handled (stream sequence up to the last
one when this writer started) whose event id is already in the device's log is not written
again; a push whose body is already stored (the ingestor's `KnownPushes`) neither. The log
store asks `fence` for every line just before writing it: a partition this node does not
write, or whose lease lapsed, is refused.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import orjson
from nats.aio.msg import Msg

from eventlog.backward import newest_lines
from eventlog.events import PUSH, BadLine, Event, body_digest, format_instant
from eventlog.files import device_ids
from eventlog.recovery import repair_device
from eventlog.store import LogStore, LogUnavailable
from projections.changes import Placed
from projections.projector import AppliedObserver, Projector
from projections.readings import InvalidBody, Parsed, parse_push
from projections.recorder import Position
from service.cluster.bus import Bus, decode_message, encode_message, partition_of
from service.cluster.leases import Leases
from service.config import Settings
from service.ingest import Ingestor, Published, PushKey, append_and_project

log = logging.getLogger("tlink.cluster")

FETCH_BATCH = 500
FETCH_SECONDS = 1.0
RETRY_SECONDS = 1.0
ANNOUNCE_CHUNK = 200  # events per announcement of applied events
REDELIVERY_MARGIN = timedelta(minutes=5)  # how far back of a message's time its line is looked for in the log


@dataclass(slots=True)
class _LoggedIds:
    """Event ids of a device's log lines received since `since`."""

    since: datetime
    ids: set[str]


def logged_ids(root: Path, device_id: int, since: datetime) -> set[str]:
    """The ids of the device's log lines received at or after `since` (read backward from the end)."""
    bound = format_instant(since)
    found = set()
    for line in newest_lines(root, device_id):
        doc = orjson.loads(line.raw)
        if doc["receivedAt"] < bound:  # ISO instants of one format sort as text
            break
        found.add(doc["id"])
    return found


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What /api/ready and the metrics show of a partition this node writes."""

    partition: int
    lag: int | None  # messages not yet acknowledged (None: the bus did not say)


class Node:
    """Publishing events, and writing the partitions this node holds (role all or writer)."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.node_id = settings.node_name
        self.role = settings.NODE_ROLE
        self.leases = Leases(bus, self.node_id, settings.BUS_LEASE_SECONDS, self._gain, self._lose)
        self._parts: tuple[LogStore, Projector, Ingestor] | None = None  # set by `start`
        self._writing: dict[int, asyncio.Task[None]] = {}
        self._waiters: dict[str, tuple[int, asyncio.Future[Published]]] = {}
        self._lag: dict[int, int] = {}  # partition -> messages pending after the last batch fetched
        self.on_applied: AppliedObserver | None = None  # hears of events other nodes applied (the live stream)
        self._remote: dict[int, Position] = {}  # device -> how far another node announced it applied
        self._sending: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- what the store and projector ask

    def partition(self, device_id: int) -> int:
        return partition_of(device_id, self.bus.partitions)

    def fence(self, device_id: int) -> str | None:
        """Why this node may not append to the device now (None: it may)."""
        partition = self.partition(device_id)
        if partition not in self._writing:
            return f"partition {partition} is not written by this node"
        if not self.leases.holds(partition):
            return f"the lease of partition {partition} lapsed"
        return None

    def owns(self, device_id: int) -> bool:
        """Does this node write the device (so that its projector keeps it)?"""
        return self.partition(device_id) in self._writing

    @property
    def leads(self) -> bool:
        """Does this node run the scheduled jobs (sync, backfill, retention)? The holder of partition 0 does."""
        return 0 in self._writing and self.leases.holds(0)

    @property
    def writing(self) -> list[int]:
        return sorted(self._writing)

    # ---------------------------------------------------------------- life

    async def start(self, store: LogStore, projector: Projector, ingestor: Ingestor) -> None:
        """Listen to what other nodes apply; start taking partitions (role all or writer), writing them to
        `store` (its fence is `fence`)."""
        self._parts = (store, projector, ingestor)
        await self.bus.nc.subscribe(self.bus.applied_subject, cb=self._heard)
        if self.role != "ingest":
            self.leases.start()

    @property
    def store(self) -> LogStore:
        assert self._parts is not None
        return self._parts[0]

    @property
    def projector(self) -> Projector:
        assert self._parts is not None
        return self._parts[1]

    @property
    def ingestor(self) -> Ingestor:
        assert self._parts is not None
        return self._parts[2]

    async def stop(self) -> None:
        """Give the partitions back (their writers stop), answer what still waits for them, close the bus."""
        await self.leases.stop()
        for event_id, (_, waiter) in list(self._waiters.items()):
            if not waiter.done():
                waiter.set_result(Published(event_id, False, False))
        await self.bus.close()

    async def _gain(self, partition: int) -> None:
        """A lease taken: start writing the partition (quickly: the lease round waits for this)."""
        self._writing[partition] = asyncio.create_task(self._write(partition), name=f"partition-{partition}")

    async def _take_over(self, partition: int) -> set[int]:
        """Before a partition's first line: repair its devices' torn tails (a writer killed in the middle of a
        write), forget what this node knew of them; their devices."""
        devices = {d for d in device_ids(self.store.root) if self.partition(d) == partition}
        loop = asyncio.get_running_loop()
        for device_id in sorted(devices):
            for repair in await loop.run_in_executor(None, repair_device, self.store.root, device_id):
                log.warning(repair.message)
        self.store.forget(devices)
        for device_id in devices:
            self.ingestor.forget(device_id)
        return devices

    async def _lose(self, partition: int) -> None:
        """A lease lost or given back: stop writing the partition (its messages stay for the next writer)."""
        task = self._writing.pop(partition, None)
        self._lag.pop(partition, None)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._parts is not None:
            self.projector.release({d for d in self.projector.positions() if self.partition(d) == partition})
        for event_id, (p, waiter) in list(self._waiters.items()):
            if p == partition and not waiter.done():
                waiter.set_result(Published(event_id, False, False))

    # ---------------------------------------------------------------- ingest

    async def publish(self, event: Event, key: str) -> Published:
        """Put an event on the bus (LogUnavailable if the bus does not take it); see the module's text."""
        partition = self.partition(event.device_id)
        waiter: asyncio.Future[Published] | None = None
        if partition in self._writing:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[event.id] = (partition, waiter)
        try:
            try:
                seq, duplicate = await self.bus.publish(event, key)
            except Exception as exc:
                raise LogUnavailable(f"the bus did not take the event: {exc or type(exc).__name__}") from None
            if duplicate:
                try:
                    earlier = await self.bus.stored_event(seq)
                except Exception:
                    earlier = None
                return Published(None if earlier is None else earlier.id, True, False)
            if waiter is None:
                return Published(event.id, False, False)
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), self.settings.BUS_LEASE_SECONDS)
            except TimeoutError:
                return Published(event.id, False, False)
        finally:
            self._waiters.pop(event.id, None)

    def _settle(self, event_id: str, published: Published) -> None:
        entry = self._waiters.get(event_id)
        if entry is not None and not entry[1].done():
            entry[1].set_result(published)

    # ---------------------------------------------------------------- writer

    async def _write(self, partition: int) -> None:
        """Write the partition's messages for as long as this node holds it."""
        adopted = False
        while partition in self._writing:
            try:
                if not adopted:
                    await self.projector.adopt(await self._take_over(partition))
                    adopted = True
                await self._consume(partition)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("writer of partition %d: %s; starting again from the first unacknowledged message",
                            partition, repr(exc), extra={"partition": partition})  # fmt: skip
                await asyncio.sleep(RETRY_SECONDS)

    async def _consume(self, partition: int) -> None:
        uncertain = await self.bus.last_sequence()  # up to here, an earlier writer may have written messages
        seen = await self.bus.written(partition)
        sub = await self.bus.consumer_from(partition, seen + 1)
        logged: dict[int, _LoggedIds] = {}
        idle = 0
        try:
            while partition in self._writing:
                try:
                    msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_SECONDS)
                except TimeoutError:  # nothing came (the client's own or asyncio's timeout)
                    msgs = []
                if not msgs:
                    idle = idle + 1 if await self.bus.last_of(partition) > seen else 0
                    if idle >= 2:  # messages are there that the consumer does not deliver: its server is gone?
                        raise LogUnavailable(f"the consumer of partition {partition} delivers nothing")
                    self._lag[partition] = 0
                    continue
                idle = 0
                self._lag[partition] = len(msgs) + int(msgs[-1].metadata.num_pending or 0)
                await self._write_batch(msgs, uncertain, logged)
                seen = msgs[-1].metadata.sequence.stream
                await self.bus.record_written(partition, seen)
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe: %s", exc)

    async def _write_batch(self, msgs: list[Msg], uncertain: int, logged: dict[int, _LoggedIds]) -> None:
        """Append the batch's events that are not in the log yet; returns once all are on disk."""
        todo: list[tuple[Event, Parsed | None, PushKey | None]] = []
        keys: dict[PushKey, str] = {}
        for msg in msgs:
            try:
                event = decode_message(msg.data)
            except BadLine as exc:  # nothing this service publishes
                log.error("message %s of the events stream is not an event, skipped: %s", msg.metadata.sequence, exc)
                continue
            if msg.metadata.sequence.stream <= uncertain and await self._in_log(event, logged):
                self._settle(event.id, Published(event.id, False, False))
                continue
            parsed, key = None, None
            if event.type == PUSH:
                try:
                    push = parse_push(event.body)
                except InvalidBody:
                    push = None  # checked at ingest; the projector reads it (and says why it cannot)
                if push is not None:
                    key = (event.device_id, body_digest(event.body))
                    stored = keys.get(key) or await self.ingestor.known.lookup(key, push.sent)
                    if stored is not None and stored != event.id:
                        self._settle(event.id, Published(stored, True, True))
                        continue
                    keys[key] = event.id
                    parsed = Parsed(push.readings, key[1], push.sent)
            todo.append((event, parsed, key))
        if not todo:
            return
        results = await asyncio.gather(
            *(append_and_project(self.store, self.projector, event, parsed) for event, parsed, _ in todo),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        for (event, parsed, key), result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            appended, projection = result
            if key is not None and parsed is not None and parsed.sent is not None:
                self.ingestor.known.remember(key, event.id, parsed.sent)
            projection.add_done_callback(partial(self._projected, appended.event.id))
        if failure is not None:
            raise failure

    def _projected(self, event_id: str, projection: asyncio.Future[bool]) -> None:
        projected = not projection.cancelled() and projection.exception() is None and projection.result()
        self._settle(event_id, Published(event_id, False, projected))

    async def _in_log(self, event: Event, logged: dict[int, _LoggedIds]) -> bool:
        """Is this event's line already in its device's log (written by an earlier writer)?"""
        since = event.received_at - REDELIVERY_MARGIN
        known = logged.get(event.device_id)
        if known is None or known.since > since:
            ids = await asyncio.get_running_loop().run_in_executor(
                None, logged_ids, self.store.root, event.device_id, since
            )
            known = logged[event.device_id] = _LoggedIds(since, ids)
        return event.id in known.ids

    # ---------------------------------------------------------------- what the nodes applied

    def announce(self, placed: list[Placed]) -> None:
        """After a commit of this node's projector: tell the other nodes (their live streams), on core NATS
        (no storage, no acknowledgement: a node that misses it resumes its streams from the files)."""
        if not placed or not self.bus.connected:
            return
        for at in range(0, len(placed), ANNOUNCE_CHUNK):  # within the servers' message size
            events = [[encode_message(p.event).decode(), p.day, p.line_no, p.offset, p.length, p.hash]
                      for p in placed[at : at + ANNOUNCE_CHUNK]]  # fmt: skip
            task = asyncio.ensure_future(
                self.bus.nc.publish(self.bus.applied_subject, orjson.dumps({"node": self.leases.value.decode(),
                                                                            "events": events}))
            )  # fmt: skip
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("announcement not sent: %s", exc)

    async def _heard(self, msg: Msg) -> None:
        """Another node applied events: its devices' positions move, and the live streams hear of them."""
        try:
            doc = orjson.loads(msg.data)
            if doc["node"] == self.leases.value.decode():
                return
            placed = []
            for line, day, line_no, offset, length, digest in doc["events"]:
                event = decode_message(line.encode())
                if self.owns(event.device_id):
                    continue
                placed.append(Placed(event, day, line_no, offset, length, digest))
                known = self._remote.get(event.device_id)
                if known is None or (day, offset + length) > (known.day, known.byte_count):
                    self._remote[event.device_id] = Position(day, line_no, offset + length, digest)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, BadLine) as exc:
            log.warning("an announcement of applied events could not be read: %s", exc)
            return
        if placed and self.on_applied is not None:
            self.on_applied(placed)

    def positions(self) -> dict[int, Position]:
        """How far the read models hold each device's log, as far as this node knows: its projector's positions
        for the devices it writes, the other nodes' announcements for the others."""
        merged = self.projector.positions()
        for device_id, pos in self._remote.items():
            known = merged.get(device_id)
            newer = known is None or (pos.day, pos.byte_count) > (known.day, known.byte_count)
            if newer and not self.owns(device_id):
                merged[device_id] = pos
        return merged

    # ---------------------------------------------------------------- status

    def partitions(self) -> list[PartitionState]:
        """The partitions this node writes, with their lag as of the last batch fetched."""
        return [PartitionState(p, self._lag.get(p)) for p in self.writing]
