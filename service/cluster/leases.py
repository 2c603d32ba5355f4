"""Partition leases: each partition of the devices has at most one writer at a time.

A lease is a key of the `<name>_leases` bucket (key: the partition number; value: the
holder's node id and a random token of this process), whose TTL is BUS_LEASE_SECONDS: a key
that is not renewed within that time expires. The holder renews every quarter of the TTL
with a compare-and-set on the key's revision (`update(last=revision)`); a free key is taken
with `create` (which fails if someone holds it).

Fencing: the holder counts its lease as valid only until 80 % of the TTL after it *sent* its
last successful renewal, measured on its own monotonic clock. The key expires on the server a
TTL after it *stored* that renewal, which is later; so a holder that was paused (SIGSTOP), cut
off, or whose renewals fail stops appending before anyone else can take the key, and when it
runs again it finds its lease invalid before its next append (`holds` is checked for every line
just before its batch is written).

Balance: every node also keeps a key in `<name>_nodes` (same TTL). A node takes free
partitions up to its fair share, ceil(partitions / live nodes), starting from a place that
depends on its id, and gives back (after its writer stopped) the partitions it holds beyond that
share, so a node that joins gets its share within a few renewals.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from service.cluster.bus import Bus

log = logging.getLogger("tlink.leases")

VALID_SHARE = 0.8  # of the TTL after a renewal was sent: how long the holder counts on its lease
RENEW_SHARE = 0.25  # of the TTL: how often leases are renewed and free ones looked for

PartitionHook = Callable[[int], Awaitable[None]]


@dataclass(slots=True)
class _Held:
    revision: int
    valid_until: float  # time.monotonic()


class Leases:
    """The partitions this node holds, kept renewed; `on_gain`/`on_loss` start and stop their writers."""

    def __init__(self, bus: Bus, node_id: str, seconds: float, on_gain: PartitionHook, on_loss: PartitionHook) -> None:
        self.bus = bus
        self.node_id = node_id
        self.seconds = seconds
        self.value = f"{node_id} {secrets.token_hex(4)}".encode()
        self._on_gain, self._on_loss = on_gain, on_loss
        self._held: dict[int, _Held] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.live_nodes = 1
        self.gained_at: dict[int, float] = {}  # partition -> time.monotonic() it was taken

    def holds(self, partition: int) -> bool:
        """Does this node hold the partition's lease now (by its own clock)?"""
        held = self._held.get(partition)
        return held is not None and time.monotonic() < held.valid_until

    @property
    def held(self) -> list[int]:
        """The partitions whose lease this node holds now."""
        return sorted(p for p in self._held if self.holds(p))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leases")

    async def stop(self) -> None:
        """Stop renewing; the writers stop, then the keys are deleted so other nodes take over at once."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for partition in sorted(self._held):
            await self._give_back(partition)
        try:  # no longer counted among the live nodes: the others take their share of what it gave back at once
            await self.bus.forget_node(self._node_key)
        except Exception as exc:
            log.debug("node key not removed: %s", exc)

    @property
    def _node_key(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in self.node_id)

    async def _run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus does not answer: leases lapse by themselves (holds)
                log.warning("lease round failed: %s", exc)
            await self._drop_lapsed()
            await asyncio.sleep(max(0.05, self.seconds * RENEW_SHARE - (time.monotonic() - started)))

    async def tick(self) -> None:
        """One round: say this node is alive, renew what it holds, then take or give back partitions."""
        await self.bus.nodes.put(self._node_key, self.value)
        for partition in sorted(self._held):
            await self._renew(partition)
        self.live_nodes = max(1, await self.bus.live_nodes())
        share = math.ceil(self.bus.partitions / self.live_nodes)
        for partition in sorted(self._held, reverse=True)[: max(0, len(self._held) - share)]:
            log.info("giving back partition %d (fair share %d of %d live nodes)", partition, share,
                     self.live_nodes)  # fmt: skip
            await self._give_back(partition)
        if len(self._held) < share:
            await self._take_free(share)

    async def _renew(self, partition: int) -> None:
        held = self._held[partition]
        sent = time.monotonic()
        try:
            held.revision = await self.bus.leases.update(str(partition), self.value, last=held.revision)
        except KeyWrongLastSequenceError:
            if not await self._still_ours(partition, sent):
                await self._lose(partition, "its lease was taken by another node")
            return
        held.valid_until = sent + self.seconds * VALID_SHARE

    async def _still_ours(self, partition: int, sent: float) -> bool:
        """After a renewal that found another revision: is the key ours all the same (an earlier renewal that
        timed out went through)?"""
        try:
            entry = await self.bus.leases.get(str(partition))
        except NotFoundError:
            return False
        if entry.value != self.value or entry.revision is None:
            return False
        self._held[partition] = _Held(entry.revision, sent + self.seconds * VALID_SHARE)
        return True

    async def _take_free(self, share: int) -> None:
        start = zlib.crc32(self.node_id.encode()) % self.bus.partitions
        for step in range(self.bus.partitions):
            if len(self._held) >= share or self._stopping:
                return
            partition = (start + step) % self.bus.partitions
            if partition in self._held:
                continue
            sent = time.monotonic()
            try:
                revision = await self.bus.leases.create(str(partition), self.value)
            except KeyWrongLastSequenceError:
                continue  # held by another node
            self._held[partition] = _Held(revision, sent + self.seconds * VALID_SHARE)
            self.gained_at[partition] = sent
            log.info("took partition %d", partition, extra={"partition": partition})
            try:
                await self._on_gain(partition)
            except Exception:
                log.exception("starting the writer of partition %d failed; giving it back", partition)
                await self._give_back(partition)

    async def _drop_lapsed(self) -> None:
        for partition in [p for p in self._held if not self.holds(p)]:
            await self._lose(partition, f"its lease was not renewed within {self.seconds * VALID_SHARE:g} s")

    async def _lose(self, partition: int, why: str) -> None:
        self._held.pop(partition, None)
        self.gained_at.pop(partition, None)
        log.warning("lost partition %d: %s", partition, why, extra={"partition": partition})
        await self._on_loss(partition)

    async def _give_back(self, partition: int) -> None:
        """Stop the partition's writer, then delete the key (if it is still ours) for another node to take."""
        held = self._held.pop(partition, None)
        self.gained_at.pop(partition, None)
        await self._on_loss(partition)
        if held is None:
            return
        try:
            await self.bus.leases.delete(str(partition), last=held.revision)
        except Exception as exc:  # taken meanwhile, or the bus does not answer: the key expires by itself
            log.debug("lease of partition %d not deleted: %s", partition, exc)
