"""The web application: the routes, the middlewares, and the services opened for the app's lifetime.

Everything long-lived is built by service.bootstrap; this module only puts the HTTP side
around it: `create_app(settings)` makes the app (nothing is opened until it starts),
`services_ctx` opens the services when it starts, and `jobs_ctx` runs the scheduled jobs
on them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from projections.changes import Placed
from service.bootstrap import Services, open_services
from service.config import Settings
from service.http.api import answer_zone
from service.http.body import BodyBudget
from service.http.connections import JsonErrorServer
from service.http.keys import (
    BACKFILL_JOB,
    BACKFILL_STATS,
    BODY_BUDGET,
    METRICS,
    OPENAPI_DOCUMENT,
    READY_NOTES,
    RETENTION_JOB,
    RETENTION_STATS,
    SCHEDULER,
    SERVICES,
    SETTINGS,
    STREAM_HUB,
    STREAM_STATS,
    SYNC_JOB,
    SYNC_STATS,
)
from service.http.middleware.auth import api_key_middleware
from service.http.middleware.caching import cache_middleware
from service.http.middleware.cors import add_origin, cors_middleware
from service.http.middleware.errors import error_middleware
from service.http.middleware.metrics import metrics_middleware
from service.http.openapi import build_document
from service.http.readiness import ReadyNotes
from service.http.routes import OPERATIONS, add_routes
from service.http.stream import LiveText
from service.jobs.backfill import BackfillStats
from service.jobs.retention import RetentionStats
from service.jobs.scheduler import run_jobs
from service.jobs.sync import SyncStats
from service.metrics import new_metrics
from service.stream import StreamHub, StreamStats

if TYPE_CHECKING:
    from service.cluster.node import Node


def create_app(settings: Settings, **services: Any) -> web.Application:
    """The aiohttp application for these settings; nothing is opened until it starts.

    `services` go to service.bootstrap.open_services (a test's own recorder, for example).
    """
    # Outermost first: metrics sees the answer the error middleware made of any error.
    # Innermost: the caching middleware sees the handler's own answers (ETag, 304, gzip of GET /api/* 200s).
    middlewares = [metrics_middleware, error_middleware, cors_middleware, api_key_middleware, cache_middleware]
    app = web.Application(client_max_size=settings.MAX_BODY_BYTES, middlewares=middlewares)
    app[SETTINGS] = settings
    app[SYNC_STATS], app[RETENTION_STATS], app[BACKFILL_STATS] = SyncStats(), RetentionStats(), BackfillStats()
    app[STREAM_STATS] = StreamStats()
    app[METRICS] = new_metrics(
        lambda: app.get(SERVICES), app[SYNC_STATS], app[RETENTION_STATS], app[BACKFILL_STATS], app[STREAM_STATS]
    )
    app[BODY_BUDGET] = BodyBudget(settings.MAX_BUFFERED_BODY_BYTES)
    app[READY_NOTES] = ReadyNotes()
    app[OPENAPI_DOCUMENT] = orjson.dumps(build_document(settings, OPERATIONS))
    add_routes(app.router)
    app.on_response_prepare.append(add_origin)
    app.cleanup_ctx.append(_services_ctx(services))
    app.cleanup_ctx.append(jobs_ctx)  # starts after the services and stops before them
    app.on_shutdown.append(close_streams)  # before the server waits for its handlers to finish
    use_json_error_server(app)
    return app


def _services_ctx(options: dict[str, Any]) -> Any:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        """The services, open for the app's lifetime."""
        metrics = app[METRICS]
        async with open_services(
            app[SETTINGS], on_flush=metrics.observe_flush, sync_stats=app[SYNC_STATS],
            backfill_stats=app[BACKFILL_STATS], **options
        ) as services:
            app[SERVICES] = services
            node = services.node
            hub = StreamHub(
                services.projector.positions if node is None else node.positions,
                LiveText(answer_zone(app[SETTINGS])), app[SETTINGS].STREAM_QUEUE_EVENTS, app[STREAM_STATS],
            )  # fmt: skip
            services.projector.on_applied = hub.publish if node is None else partial(_applied_here, hub, node)
            if node is not None:
                node.on_applied = hub.publish  # what the other nodes applied
            app[STREAM_HUB] = hub
            try:
                yield
            finally:
                services.projector.on_applied = None
                if node is not None:
                    node.on_applied = None
                hub.close()

    return services_ctx


def _applied_here(hub: StreamHub, node: Node, placed: list[Placed]) -> None:
    """Cluster mode: what this node's projector applied goes to its own streams and to the other nodes'."""
    hub.publish(placed)
    node.announce(placed)


async def close_streams(app: web.Application) -> None:
    """End every live stream, so that shutting down does not wait for their clients."""
    hub = app.get(STREAM_HUB)
    if hub is not None:
        hub.close()


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """The scheduler and its jobs, for the app's lifetime."""
    services: Services = app[SERVICES]
    async with run_jobs(services, app[RETENTION_STATS]) as jobs:
        app[SCHEDULER], app[RETENTION_JOB] = jobs.scheduler, jobs.retention
        if jobs.sync is not None:
            app[SYNC_JOB] = jobs.sync
        if jobs.backfill is not None:
            app[BACKFILL_JOB] = jobs.backfill
        yield


def use_json_error_server(app: web.Application) -> None:
    """Make every server started for `app` (run_app, aiohttp's test server) a JsonErrorServer.

    aiohttp offers no option for the connection handler's class: `Application._make_handler`
    builds the `web.Server` whatever runner starts the app, so its result gets the subclass
    (which adds no state: only `__call__` differs).
    """
    make_handler = app._make_handler

    def make(**kwargs: Any) -> web.Server:
        server = make_handler(**kwargs)
        server.__class__ = JsonErrorServer
        return server

    app._make_handler = make  # type: ignore[method-assign]
