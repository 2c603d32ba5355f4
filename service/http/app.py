"""The application factory: every long-lived resource is opened and closed here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from eventlog.deadletter import DeadLetters
from eventlog.store import LogStore
from projections.db import connect
from projections.projector import Projector
from projections.sql_recorder import SqlRecorder
from service.config import Settings
from service.http import api, health, metrics, openapi, webhook
from service.http.keys import DATABASE, DEAD_LETTERS, INGESTOR, PROJECTOR, RECORDER, SETTINGS, STORE
from service.http.middleware import cors
from service.http.middleware.auth import api_key_middleware
from service.http.middleware.errors import error_middleware
from service.ingest import Ingestor
from service.jobs import scheduler

log = logging.getLogger("tlink.app")


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """Database, log store, projector and ingestor, for the app's lifetime."""
    settings = app[SETTINGS]
    db = await connect(settings.DATABASE_URL, maxsize=settings.DB_POOL_SIZE)
    store = LogStore(settings.SYNC_LOG_DIR, on_flush=app[metrics.METRICS].observe_flush)
    for repair in await store.open():
        log.warning(
            repair.message,
            extra={
                "file": str(repair.path), "quarantine": str(repair.quarantine), "bytes": repair.moved_bytes,
                "kind": repair.kind, "reason": repair.reason,
            },
        )
    recorder = SqlRecorder(db, auto_schema=settings.AUTO_APPLY_SCHEMA)
    projector = Projector(recorder, settings.SYNC_LOG_DIR, store.durable_end, store.devices)
    store.on_staged = projector.on_staged
    await projector.start()
    app[DATABASE], app[STORE], app[RECORDER], app[PROJECTOR] = db, store, recorder, projector
    app[INGESTOR] = Ingestor(
        store, projector, recorder, settings.MAX_SAMPLES_PER_PUSH, settings.MAX_SENSORS_PER_DEVICE
    )
    app[DEAD_LETTERS] = DeadLetters(settings.SYNC_LOG_DIR)
    yield
    await store.close()  # in-flight appends finish first: they were (or will be) answered
    await projector.stop()
    await db.close()


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application for these settings; nothing is opened until it starts."""
    # Outermost first: metrics sees the answer the error middleware made of any error.
    middlewares = [metrics.metrics_middleware, error_middleware, cors.cors_middleware, api_key_middleware]
    app = web.Application(client_max_size=settings.MAX_BODY_BYTES, middlewares=middlewares)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(storage_ctx)
    scheduler.setup(app)  # its jobs_ctx starts after the storage and stops before it
    webhook.setup(app)
    metrics.setup(app)
    api.setup(app)
    health.setup(app)
    openapi.setup(app)
    cors.setup(app)
    return app
