"""The bus: a NATS connection, the JetStream stream every event goes through, and the lease buckets.

Names, from BUS_NAME (default `tlink`):

- stream `<name>_events`, subjects `<name>.events.<partition>`, BUS_REPLICAS replicas, a 2-minute
  `Nats-Msg-Id` duplicate window; a partition's messages are purged from it once its writer has
  them on disk;
- key-value buckets `<name>_leases` (key = partition number, value = the holder) and `<name>_nodes`
  (key = node id: the live nodes), both with a TTL of BUS_LEASE_SECONDS, and `<name>_progress`
  (key = partition number, value = the stream sequence up to which its messages are in the log);
- a consumer of its own (one replica, in memory) for each writer of a partition, from the
  sequence after the recorded progress.

A message is the event's log line without its chain (`prev` all zeros): the event id, type,
time of receipt, device, user and body travel as they will be written.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from eventlog.events import ZERO_HASH, Event, decode_line, encode_line
from service.config import Settings

log = logging.getLogger("tlink.bus")

DUPLICATE_WINDOW_SECONDS = 120.0
CONSUMER_IDLE_SECONDS = 30.0
PUBLISH_TIMEOUT_SECONDS = 5.0
SETUP_ATTEMPTS = 10


def partition_of(device_id: int, partitions: int) -> int:
    """The partition a device belongs to."""
    return device_id % partitions


def encode_message(event: Event) -> bytes:
    """What goes on the bus for an event: its line, unchained."""
    return encode_line(event, ZERO_HASH)


def decode_message(data: bytes) -> Event:
    """The event of a message (BadLine if it is not one)."""
    return decode_line(data)[0]


@dataclass(slots=True)
class Bus:
    """An open connection to the NATS servers of BUS_URL, with the stream and buckets in place."""

    nc: Client
    js: JetStreamContext
    name: str
    partitions: int
    leases: KeyValue
    nodes: KeyValue
    progress: KeyValue

    @property
    def stream(self) -> str:
        return f"{self.name}_events"

    def subject(self, partition: int) -> str:
        return f"{self.name}.events.{partition}"

    @property
    def applied_subject(self) -> str:
        """Core NATS subject (not stored) on which nodes announce the events their projectors applied."""
        return f"{self.name}.applied"

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def server(self) -> str | None:
        """The URL of the server the connection is on, if it is on one."""
        url = self.nc.connected_url
        return None if url is None or not self.nc.is_connected else f"{url.hostname}:{url.port}"

    async def publish(self, event: Event, key: str) -> tuple[int, bool]:
        """Publish an event to its partition with `Nats-Msg-Id` = key; (stream sequence, duplicate)
        once the stream has it (on its replicas)."""
        ack = await self.js.publish(
            self.subject(partition_of(event.device_id, self.partitions)), encode_message(event),
            timeout=PUBLISH_TIMEOUT_SECONDS, headers={"Nats-Msg-Id": key},
        )  # fmt: skip
        return ack.seq, bool(ack.duplicate)

    async def stored_event(self, seq: int) -> Event | None:
        """The event of the message at a stream sequence, if it is still in the stream."""
        try:
            msg = await self.js.get_msg(self.stream, seq)
        except NotFoundError:
            return None
        return decode_message(msg.data) if msg.data else None

    async def consumer_from(self, partition: int, start: int) -> JetStreamContext.PullSubscription:
        """A new consumer of the partition's messages from stream sequence `start` on, in order.

        Each writer makes its own (a name of its own, nothing to delete first, so a consumer left on a
        dead server or by a dead node is no obstacle; the server drops it once unused): one replica in
        memory, no acknowledgements, because where a partition's writer is is kept in the progress
        bucket (`written`), not in the consumer.
        """
        config = ConsumerConfig(
            name=f"{self.name}-p{partition}-{secrets.token_hex(4)}", filter_subject=self.subject(partition),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start), ack_policy=AckPolicy.NONE,
            inactive_threshold=CONSUMER_IDLE_SECONDS, num_replicas=1, mem_storage=True,
        )  # fmt: skip
        info = await self.js.add_consumer(self.stream, config)
        return await self.js.pull_subscribe_bind(info.name, self.stream)

    async def written(self, partition: int) -> int:
        """The stream sequence up to which the partition's messages are all in the log (0: none recorded)."""
        try:
            entry = await self.progress.get(str(partition))
        except NotFoundError:
            return 0
        return int(entry.value or b"0")

    async def record_written(self, partition: int, seq: int) -> None:
        """Record that the partition's messages up to `seq` are in the log, and drop them from the stream."""
        await self.progress.put(str(partition), str(seq).encode())
        await self.js.purge_stream(self.stream, subject=self.subject(partition), seq=seq + 1)

    async def last_of(self, partition: int) -> int:
        """The stream sequence of the partition's newest message still in the stream (0: none)."""
        try:
            msg = await self.js.get_msg(self.stream, subject=self.subject(partition))
        except NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def last_sequence(self) -> int:
        """The stream's last sequence number now."""
        return int((await self.js.stream_info(self.stream)).state.last_seq)

    async def live_nodes(self) -> int:
        """Nodes whose key in the nodes bucket has not expired (one message each: the bucket keeps no history)."""
        return int((await self.js.stream_info(f"KV_{self.name}_nodes")).state.messages)

    async def forget_node(self, key: str) -> None:
        """Remove a node's key from the nodes bucket, leaving no marker (that would be counted)."""
        await self.js.purge_stream(f"KV_{self.name}_nodes", subject=f"$KV.{self.name}_nodes.{key}")

    async def close(self) -> None:
        """Close the connection (nothing is left to flush: every publish and put was awaited)."""
        await self.nc.close()


async def open_bus(settings: Settings) -> Bus:
    """Connect to BUS_URL and make sure the stream and the buckets exist (an existing one is kept)."""

    async def disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("bus connection lost; reconnecting")

    async def reconnected() -> None:
        log.info("bus connection back")

    async def error(exc: Exception) -> None:
        log.debug("bus client: %s", exc)

    nc: Client
    nc = await nats.connect(
        servers=list(settings.BUS_URL), name=settings.node_name, max_reconnect_attempts=-1,
        reconnect_time_wait=0.5, connect_timeout=5, disconnected_cb=disconnected, reconnected_cb=reconnected,
        error_cb=error,
    )  # fmt: skip
    js = nc.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
    name, replicas, ttl = settings.BUS_NAME, settings.BUS_REPLICAS, settings.BUS_LEASE_SECONDS
    for attempt in range(SETUP_ATTEMPTS):  # a cluster that has just started may still be electing its leaders
        try:
            await js.add_stream(
                StreamConfig(
                    name=f"{name}_events", subjects=[f"{name}.events.*"], retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE, num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_SECONDS,
                )
            )  # fmt: skip
            leases = await js.create_key_value(bucket=f"{name}_leases", ttl=ttl, replicas=replicas, history=1)
            nodes = await js.create_key_value(bucket=f"{name}_nodes", ttl=ttl, replicas=replicas, history=1)
            progress = await js.create_key_value(bucket=f"{name}_progress", replicas=replicas, history=1)
            break
        except (nats.errors.TimeoutError, ServiceUnavailableError) as exc:
            if attempt + 1 == SETUP_ATTEMPTS:
                await nc.close()
                raise
            log.warning("bus not ready (%s); trying again", exc or type(exc).__name__)
            await asyncio.sleep(1.0)
    return Bus(nc, js, name, settings.BUS_PARTITIONS, leases, nodes, progress)
