"""Prometheus metrics: one registry per app, the log-store hook, scrape-time readers.

Nothing below `service` imports prometheus_client: the log store reports through its
`on_flush` hook, and the projector, the log store's repairs and the jobs' stats are
read when Prometheus scrapes, by a custom collector. Every HTTP request is counted once,
by service.http.middleware.metrics: a webhook push by its outcome (`tlink_webhook_*`),
any other request by its route template, method and status class (`tlink_http_*`).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventlog.recovery import TORN
from service.bootstrap import Services
from service.jobs.backfill import BackfillStats
from service.jobs.retention import RetentionStats
from service.jobs.sync import SyncReport, SyncStats
from service.stream import StreamStats

if TYPE_CHECKING:
    from service.cluster.node import Node

# The outcome of a push whose client disconnected before its body was received.
ABORTED = "aborted"
OUTCOMES = ("ok", "duplicate", "invalid", "too_large", "unauthorized", "unavailable", "error", ABORTED)
_OUTCOME_OF_STATUS = {400: "invalid", 413: "too_large", 401: "unauthorized", 503: "unavailable"}

# A push is one fdatasync (~0.25 ms) plus parsing and projection: sub-millisecond to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SYNC_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PER_SYNC_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# A read answer: a latest-values lookup takes about a millisecond, a 90-day device list up to seconds.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The route label of a request no route matched (404, 405, CORS preflights), whatever its path,
# and the method label of such a request whose method is not a standard one: a scanner adds no series.
UNMATCHED = "unmatched"
OTHER_METHOD = "other"
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def service_version() -> str:
    """The installed package version, or "unknown" when run from a bare checkout."""
    try:
        return version("tlink-push")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The app's registry and the instruments observed while serving."""

    def __init__(
        self,
        services: Callable[[], Services | None],
        sync: SyncStats,
        retention: RetentionStats,
        backfill: BackfillStats,
        stream: StreamStats | None = None,
    ) -> None:
        # Per app, not the global REGISTRY, so a process (or a test) can hold many apps.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhook_requests = Counter(
            "tlink_webhook_requests", "Webhook pushes answered, by outcome.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.webhook_requests.labels(outcome)
        self.webhook_seconds = Histogram(
            "tlink_webhook_duration_seconds", "Time to handle one webhook push, any outcome.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.readings_stored = Counter(
            "tlink_webhook_readings_stored", "Readings in pushes stored (not counting duplicates).", registry=r
        )
        self.dead_lettered = Counter(
            "tlink_webhook_dead_lettered",
            "Authenticated push bodies that failed validation and were kept in rejected/.",
            registry=r,
        )
        self.http_requests = Counter(
            "tlink_http_requests", "HTTP requests answered, webhook pushes excepted, by route template, method and"
            " status class.", ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "tlink_http_request_duration_seconds", "Time to answer one HTTP request, webhook pushes and live streams"
            " excepted, by route template and method.", ["route", "method"], buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self.log_lines = Counter("tlink_log_appended_lines", "Event lines appended to the log files.", registry=r)
        self.log_bytes = Counter("tlink_log_appended_bytes", "Bytes appended to the log files.", registry=r)
        self.fsync_seconds = Histogram(
            "tlink_log_fsync_duration_seconds", "Time to write and fdatasync one group commit.",
            buckets=FSYNC_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_lines = Histogram(
            "tlink_log_group_commit_lines", "Lines made durable by one group commit (one fdatasync per file).",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.sync_seconds = Histogram(
            "tlink_sync_duration_seconds", "Duration of one TLINK sync run.", buckets=SYNC_SECONDS_BUCKETS, registry=r
        )
        self.sync_devices = Histogram(
            "tlink_sync_run_devices", "Devices (sync events) stored by one sync run.", buckets=PER_SYNC_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.sync_readings = Histogram(
            "tlink_sync_run_readings", "New readings brought by one sync run.", buckets=PER_SYNC_BUCKETS, registry=r
        )
        build = Gauge(
            "tlink_build_info", "Always 1; the labels describe the running build.", ["version", "python"], registry=r
        )
        build.labels(service_version(), platform.python_version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(StateCollector(services, sync, retention, backfill, stream or StreamStats()))
        sync.observers.append(self.observe_sync)
        self._page = make_aiohttp_handler(r)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """GET /metrics: the text exposition of the registry."""
        return await self._page(request)

    def observe_flush(self, lines: int, size: int, fsync_seconds: float) -> None:
        """The log store's on_flush hook: one group commit became durable."""
        self.log_lines.inc(lines)
        self.log_bytes.inc(size)
        self.fsync_seconds.observe(fsync_seconds)
        self.batch_lines.observe(lines)

    def observe_sync(self, report: SyncReport) -> None:
        """The sync stats' observer: one run finished."""
        self.sync_seconds.observe(report.seconds)
        self.sync_devices.observe(report.devices)
        self.sync_readings.observe(report.readings)

    def observe_push(self, outcome: str, seconds: float, stored_readings: int, dead_lettered: bool) -> None:
        """Count one answered webhook push."""
        self.webhook_requests.labels(outcome).inc()
        self.webhook_seconds.observe(seconds)
        self.readings_stored.inc(stored_readings)
        if dead_lettered:
            self.dead_lettered.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float | None) -> None:
        """Count one answered request other than a webhook push; `seconds` None leaves it out of the timings."""
        self.http_requests.labels(route, method, status_class(status)).inc()
        if seconds is not None:
            self.http_seconds.labels(route, method).observe(seconds)


def status_class(status: int) -> str:
    """The status label of an answer: `2xx`, `4xx`, ..."""
    return _STATUS_CLASSES.get(status // 100, "5xx")


def outcome_of_status(status: int) -> str:
    """The outcome label of an answer the handler did not label itself."""
    if status < 300:
        return "ok"
    if status in _OUTCOME_OF_STATUS:
        return _OUTCOME_OF_STATUS[status]
    return "invalid" if status < 500 else "error"


class StateCollector(Collector):
    """Reads the log store's repairs, the projector's state and the jobs' stats at scrape time."""

    def __init__(
        self,
        services: Callable[[], Services | None],
        sync: SyncStats,
        retention: RetentionStats,
        backfill: BackfillStats,
        stream: StreamStats,
    ) -> None:
        self._services = services
        self._stream_stats = stream
        self._sync_stats = sync
        self._retention_stats = retention
        self._backfill_stats = backfill

    def collect(self) -> Iterator[Metric]:
        """The current values; the log store's and the projector's only once the services are open."""
        services = self._services()
        if services is not None:
            yield from self._repairs(services)
            yield from self._projection(services)
            if services.node is not None:
                yield from self._cluster(services.node)
        yield from self._sync()
        yield from self._backfill()
        yield from self._retention()
        yield from self._stream()

    def _repairs(self, services: Services) -> Iterator[Metric]:
        repairs = services.store.repairs
        torn = [r for r in repairs if r.kind == TORN]
        yield CounterMetricFamily(
            "tlink_log_torn_tails_repaired", "Torn log tails moved to a .torn quarantine file at start-up.",
            value=len(torn),
        )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_log_torn_quarantined_bytes", "Bytes of torn log tails moved to quarantine at start-up.",
            value=sum(r.moved_bytes for r in torn),
        )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_log_foreign_files_moved",
            "Files not of this service's log format moved aside to .foreign at start-up.",
            value=len(repairs) - len(torn),
        )  # fmt: skip

    def _projection(self, services: Services) -> Iterator[Metric]:
        projector = services.projector
        stats = projector.stats
        yield GaugeMetricFamily(
            "tlink_projection_devices_behind", "Devices whose log is ahead of the read models.", value=projector.behind
        )
        yield GaugeMetricFamily(
            "tlink_projection_queued_events", "Appended events waiting for the projector's next batch.",
            value=projector.queued,
        )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_projection_applied_events", "Events applied to the read models.", value=stats.applied_events
        )
        if stats.last_applied_at is not None:
            yield GaugeMetricFamily(
                "tlink_projection_last_applied_timestamp_seconds", "Unix time the projector last committed a batch.",
                value=_wall_clock(stats.last_applied_at),
            )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_projection_failures", "Times the projection of a device (or the projector) stopped on an error.",
            value=stats.failures,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tlink_projection_failed", "1 while the projector is stopped on an error (see /api/ready).",
            value=int(projector.failed is not None),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tlink_projection_stopped_devices",
            "Devices whose projection stopped at a line it cannot apply (named in /api/ready and the log).",
            value=len(projector.stopped),
        )
        yield GaugeMetricFamily(
            "tlink_projection_database_available", "1 if the projector's last attempt reached the database.",
            value=int(projector.available),
        )  # fmt: skip

    def _cluster(self, node: Node) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tlink_bus_connected", "1 while this node is connected to a NATS server of BUS_URL.",
            value=int(node.bus.connected),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tlink_bus_live_nodes", "Nodes that announced themselves on the bus within the lease time.",
            value=node.leases.live_nodes,
        )  # fmt: skip
        partitions = node.partitions()
        yield GaugeMetricFamily(
            "tlink_bus_partitions_owned", "Partitions of the devices whose lease this node holds and writes.",
            value=len(partitions),
        )  # fmt: skip
        lag = GaugeMetricFamily(
            "tlink_bus_partition_lag",
            "Messages of a partition this node writes, not yet written (as of its last fetch).",
            labels=["partition"],
        )  # fmt: skip
        for state in partitions:
            if state.lag is not None:
                lag.add_metric([str(state.partition)], state.lag)
        yield lag

    def _sync(self) -> Iterator[Metric]:
        stats = self._sync_stats
        yield by_outcome("tlink_sync_runs", "Finished TLINK sync runs, by outcome.", stats.runs)
        yield CounterMetricFamily(
            "tlink_sync_runs_skipped", "Scheduled sync runs dropped because the previous one was still going.",
            value=stats.skipped_runs,
        )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_sync_failures", "Sync failures recorded (a page or a device that could not be synced).",
            value=stats.failures,
        )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_sync_devices_unchanged",
            "Synced device objects identical to their device's newest sync event, so not appended again.",
            value=stats.unchanged,
        )
        yield CounterMetricFamily(
            "tlink_sync_token_refreshes", "OAuth tokens obtained from TLINK, the first one included.",
            value=stats.token_refreshes,
        )  # fmt: skip
        yield GaugeMetricFamily("tlink_sync_running", "1 while a sync run is in progress.", value=int(stats.running))
        if stats.interval_seconds is not None:
            yield GaugeMetricFamily(
                "tlink_sync_interval_seconds", "TLINK_SYNC_INTERVAL_SECONDS; absent while the sync is not scheduled.",
                value=stats.interval_seconds,
            )  # fmt: skip
        if stats.last_finished_at is not None:
            yield GaugeMetricFamily(
                "tlink_sync_last_run_timestamp_seconds", "Unix time the last sync run finished.",
                value=stats.last_finished_at.timestamp(),
            )  # fmt: skip

    def _backfill(self) -> Iterator[Metric]:
        stats = self._backfill_stats
        yield by_outcome("tlink_backfill_runs", "Finished backfill runs, by outcome.", stats.runs)
        yield by_outcome(
            "tlink_backfill_calls", "getSensorHistroy calls, by outcome (ok, refused, failed: no answer).", stats.calls
        )
        yield CounterMetricFamily(
            "tlink_backfill_readings_recovered", "Readings inside gaps brought by backfill pages.",
            value=stats.recovered,
        )
        yield CounterMetricFamily(
            "tlink_backfill_quota_refusals",
            "Gaps left for a later day because their sensor's calls of the day (BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY)"
            " were used up.",
            value=stats.quota_refusals,
        )
        yield GaugeMetricFamily(
            "tlink_backfill_open_gaps", "Gaps the last backfill run left to be asked.", value=stats.open_gaps
        )
        yield GaugeMetricFamily(
            "tlink_backfill_running", "1 while a backfill run is in progress.", value=int(stats.running)
        )

    def _retention(self) -> Iterator[Metric]:
        stats = self._retention_stats
        outcomes = {"ok": stats.runs, "failed": stats.failed_runs}
        yield by_outcome("tlink_retention_runs", "Finished retention passes, by outcome.", outcomes)
        yield CounterMetricFamily(
            "tlink_retention_files_deleted", "Daily log files deleted for being older than LOG_AGE days.",
            value=stats.files_deleted,
        )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_retention_files_kept", "Daily files due for deletion but kept (mismatch, database unreachable).",
            value=stats.files_kept,
        )  # fmt: skip
        if stats.last_finished_at is not None:
            yield GaugeMetricFamily(
                "tlink_retention_last_run_timestamp_seconds", "Unix time the last retention pass finished.",
                value=stats.last_finished_at.timestamp(),
            )  # fmt: skip


    def _stream(self) -> Iterator[Metric]:
        stats = self._stream_stats
        yield GaugeMetricFamily(
            "tlink_stream_open", "Live streams (GET /api/users/<userId>/stream) open now.", value=stats.open
        )
        yield CounterMetricFamily(
            "tlink_stream_events_sent", "Events written to live stream clients (each client counted).",
            value=stats.events_sent,
        )  # fmt: skip
        yield CounterMetricFamily(
            "tlink_stream_clients_dropped",
            "Live stream clients closed with `event: overflow` for falling STREAM_QUEUE_EVENTS behind.",
            value=stats.clients_dropped,
        )


def by_outcome(name: str, documentation: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter family with one series per `outcome` label."""
    family = CounterMetricFamily(name, documentation, labels=["outcome"])
    for outcome, count in counts.items():
        family.add_metric([outcome], count)
    return family


def _wall_clock(loop_time: float) -> float:
    """A reading of the event loop's clock (time.monotonic) as Unix time."""
    return time.time() - (time.monotonic() - loop_time)


def new_metrics(
    services: Callable[[], Services | None],
    sync: SyncStats,
    retention: RetentionStats,
    backfill: BackfillStats,
    stream: StreamStats | None = None,
) -> Metrics:
    """The metrics of one app."""
    # The `_created` series double the output and Prometheus ignores them in text format.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return Metrics(services, sync, retention, backfill, stream)
