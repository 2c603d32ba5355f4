"""Typed keys of everything the web application and its requests hold: the one list of them."""

from __future__ import annotations

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from projections.retention import PruneReport
from service.bootstrap import Services
from service.config import Settings
from service.http.body import BodyBudget
from service.http.readiness import ReadyNotes
from service.jobs.backfill import BackfillReport, BackfillStats
from service.jobs.retention import RetentionStats
from service.jobs.scheduler import ExclusiveJob
from service.jobs.sync import SyncReport, SyncStats
from service.metrics import Metrics
from service.stream import StreamHub, StreamStats

# Set by create_app, readable from the app's creation on.
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
SYNC_STATS = web.AppKey("sync_stats", SyncStats)
BACKFILL_STATS = web.AppKey("backfill_stats", BackfillStats)
RETENTION_STATS = web.AppKey("retention_stats", RetentionStats)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
READY_NOTES = web.AppKey("ready_notes", ReadyNotes)
OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)
STREAM_STATS = web.AppKey("stream_stats", StreamStats)

# Set once the app has started (service.http.app's cleanup contexts).
SERVICES = web.AppKey("services", Services)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
SYNC_JOB: web.AppKey[ExclusiveJob[SyncReport]] = web.AppKey("sync_job")  # only when the sync is scheduled
RETENTION_JOB: web.AppKey[ExclusiveJob[PruneReport]] = web.AppKey("retention_job")
BACKFILL_JOB: web.AppKey[ExclusiveJob[BackfillReport]] = web.AppKey("backfill_job")  # only when scheduled
STREAM_HUB = web.AppKey("stream_hub", StreamHub)  # the live stream's fan-out, fed by the projector

# Set by the webhook handler for the metrics middleware.
PUSH_OUTCOME = web.RequestKey("push_outcome", str)  # "ok", "duplicate" or service.metrics.ABORTED
STORED_READINGS = web.RequestKey("stored_readings", int)
DEAD_LETTERED = web.RequestKey("dead_lettered", bool)
