"""Liveness and readiness.

/api/health answers as long as the process serves requests. /api/ready is 200 only when
the service can do its job: the log root is writable, the database answers, and the
projector is running and not behind; otherwise 503 with the reasons.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from eventlog.db import Database, DatabaseError
from eventlog.files import log_path
from projections.projector import Projector
from service.api import answer
from service.keys import DATABASE, PROJECTOR, SETTINGS
from service.schemas import Check, HealthAnswer, ProjectionCheck, ReadyAnswer, StoppedDevice

PING_TIMEOUT = 2.0


async def health(request: web.Request) -> web.Response:
    """GET /api/health"""
    return answer(HealthAnswer, {"status": "ok"})


def log_root_check(root: Path) -> Check:
    """The log root exists and this process may write to it."""
    if not root.is_dir():
        return Check(ok=False, detail=f"log root {root} does not exist")
    if not os.access(root, os.W_OK):
        return Check(ok=False, detail=f"log root {root} is not writable")
    return Check(ok=True)


async def database_check(db: Database) -> Check:
    """A trivial query answers within PING_TIMEOUT seconds."""
    try:
        await asyncio.wait_for(db.ping(), PING_TIMEOUT)
    except TimeoutError:
        return Check(ok=False, detail=f"database did not answer within {PING_TIMEOUT:g} s")
    except DatabaseError as exc:
        return Check(ok=False, detail=str(exc))
    return Check(ok=True)


def projection_check(projector: Projector) -> ProjectionCheck:
    """The projector runs, and neither devices nor queued events wait for more than a batch."""
    failed = None if projector.failed is None else str(projector.failed) or type(projector.failed).__name__
    behind, queued = projector.behind, projector.queued
    ok = failed is None and behind == 0 and queued <= projector.batch_limit
    stopped = [
        StoppedDevice(
            deviceId=stop.device_id,
            file=str(log_path(projector.root, stop.device_id, stop.day).relative_to(projector.root)),
            line=stop.line_no,
            eventId=stop.event_id,
            reason=stop.reason,
        )
        for stop in sorted(projector.stopped.values(), key=lambda stop: stop.device_id)
    ]
    return ProjectionCheck(ok=ok, behindDevices=behind, queuedEvents=queued, failed=failed, stoppedDevices=stopped)


def reasons(log_root: Check, database: Check, projection: ProjectionCheck) -> list[str]:
    """Why the service is not ready, one sentence a failed check."""
    found = []
    if not log_root.ok:
        found.append(f"event log: {log_root.detail}")
    if not database.ok:
        found.append(f"database unreachable: {database.detail}")
    if projection.failed is not None:
        found.append(f"projector stopped: {projection.failed}")
    elif projection.behindDevices:
        found.append(f"read models catching up: {projection.behindDevices} device(s) behind the log")
    elif not projection.ok:
        found.append(f"read models lagging: {projection.queuedEvents} events queued")
    return found


async def ready(request: web.Request) -> web.Response:
    """GET /api/ready"""
    log_root = log_root_check(request.app[SETTINGS].SYNC_LOG_DIR)
    database = await database_check(request.app[DATABASE])
    projection = projection_check(request.app[PROJECTOR])
    found = reasons(log_root, database, projection)
    data = {
        "status": "not ready" if found else "ready",
        "reasons": found,
        "checks": {
            "logRoot": log_root.model_dump(),
            "database": database.model_dump(),
            "projection": projection.model_dump(),
        },
    }
    return answer(ReadyAnswer, data, 503 if found else 200)


def setup(app: web.Application) -> None:
    """Register /api/health and /api/ready."""
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/ready", ready)
