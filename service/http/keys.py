"""Typed keys of everything the application holds."""

from __future__ import annotations

from aiohttp import web

from eventlog.deadletter import DeadLetters
from eventlog.store import LogStore
from projections.db import Database
from projections.projector import Projector
from projections.recorder import Recorder
from service.config import Settings
from service.ingest import Ingestor

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
STORE = web.AppKey("store", LogStore)
RECORDER = web.AppKey("recorder", Recorder)
PROJECTOR = web.AppKey("projector", Projector)
INGESTOR = web.AppKey("ingestor", Ingestor)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetters)

# Set by the webhook handler for the metrics middleware.
PUSH_OUTCOME = web.RequestKey("push_outcome", str)  # "ok" or "duplicate"
STORED_READINGS = web.RequestKey("stored_readings", int)
DEAD_LETTERED = web.RequestKey("dead_lettered", bool)
