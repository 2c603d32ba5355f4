"""Liveness and readiness.

/api/health answers as long as the process serves requests. /api/ready is 200 only when
the service can do its job: the log root is writable, the database answers, and the
projector is running and not behind; otherwise 503 with the reasons.

Both are exempt from API_KEYS, so /api/ready tells an anonymous caller only which check
failed: the database's own message (host, port, driver text) is never in the answer, and
the log root's path, the projector's error and the reason a device's projection stopped
are shown only to a request that may read the data (a valid API key, or API_KEYS unset).
The details are in the service log, once each time they change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from eventlog.files import log_path
from projections.db import Database, DatabaseError, DatabaseUnavailable
from projections.projector import DeviceStop, Projector
from service.http.api import answer
from service.http.keys import DATABASE, PROJECTOR, SETTINGS
from service.http.middleware.auth import key_ok
from service.http.schemas import Check, HealthAnswer, ProjectionCheck, ReadyAnswer, StoppedDevice

PING_TIMEOUT = 2.0

log = logging.getLogger("tlink.health")

DATABASE_UNREACHABLE = "cannot connect (the service log has the details)"
DATABASE_ERROR = "the test query failed (the service log has the details)"
PROJECTOR_FAILED = "the projector stopped on an error (the service log has it)"
STOP_NOT_AN_EVENT = "not a valid event line (the service log has the details)"
STOP_NOT_APPLIED = "the line cannot be applied (the service log has the details)"


@dataclass(slots=True)
class ReadyNotes:
    """The failed checks' details last logged, so that each is logged once when it changes."""

    logged: dict[str, str | None] = field(default_factory=dict)

    def note(self, check: str, detail: str | None) -> None:
        """Log `detail` (None: the check passes) if it differs from the one last logged for `check`."""
        if self.logged.get(check) == detail:
            return
        if detail is not None:
            log.warning("readiness check %s failed: %s", check, detail, extra={"check": check})
        elif self.logged.get(check) is not None:
            log.info("readiness check %s passes again", check, extra={"check": check})
        self.logged[check] = detail


NOTES = web.AppKey("ready_notes", ReadyNotes)


async def health(request: web.Request) -> web.Response:
    """GET /api/health"""
    return answer(HealthAnswer, {"status": "ok"})


def log_root_check(root: Path, detailed: bool = True, notes: ReadyNotes | None = None) -> Check:
    """The log root exists and this process may write to it (`detailed`: naming the folder).

    `notes` (the log) always gets the detail naming the folder.
    """
    problem = None
    if not root.is_dir():
        problem = "does not exist"
    elif not os.access(root, os.W_OK):
        problem = "is not writable"
    if notes is not None:
        notes.note("logRoot", None if problem is None else f"log root {root} {problem}")
    if problem is None:
        return Check(ok=True)
    return Check(ok=False, detail=f"log root {root} {problem}" if detailed else f"log root {problem}")


async def database_check(db: Database, notes: ReadyNotes | None = None) -> Check:
    """A trivial query answers within PING_TIMEOUT seconds.

    The detail is a fixed sentence; the database's own message goes to `notes` (the log).
    """
    logged: str | None = None
    check = Check(ok=True)
    try:
        await asyncio.wait_for(db.ping(), PING_TIMEOUT)
    except TimeoutError:
        check = Check(ok=False, detail=f"database did not answer within {PING_TIMEOUT:g} s")
        logged = check.detail
    except DatabaseUnavailable as exc:
        check, logged = Check(ok=False, detail=DATABASE_UNREACHABLE), f"cannot connect: {exc}"
    except DatabaseError as exc:
        check, logged = Check(ok=False, detail=DATABASE_ERROR), f"the test query failed: {exc}"
    if notes is not None:
        notes.note("database", logged)
    return check


def _stop_reason(stop: DeviceStop, detailed: bool) -> str:
    if detailed:
        return stop.reason
    return STOP_NOT_AN_EVENT if stop.event_id is None else STOP_NOT_APPLIED


def projection_check(projector: Projector, detailed: bool = True) -> ProjectionCheck:
    """The projector runs, and neither devices nor queued events wait for more than a batch.

    Without `detailed`, the projector's error and the devices' stop reasons are fixed sentences.
    """
    failed = None if projector.failed is None else str(projector.failed) or type(projector.failed).__name__
    if failed is not None and not detailed:
        failed = PROJECTOR_FAILED
    behind, queued = projector.behind, projector.queued
    ok = failed is None and behind == 0 and queued <= projector.batch_limit
    stopped = [
        StoppedDevice(
            deviceId=stop.device_id,
            file=str(log_path(projector.root, stop.device_id, stop.day).relative_to(projector.root)),
            line=stop.line_no,
            eventId=stop.event_id,
            reason=_stop_reason(stop, detailed),
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


def may_see_details(request: web.Request) -> bool:
    """Whether the request may read the data: API_KEYS is unset, or it carries a valid key."""
    keys = request.app[SETTINGS].API_KEYS
    return not keys or key_ok(keys, request.headers.get("Authorization"))


async def ready(request: web.Request) -> web.Response:
    """GET /api/ready"""
    settings, notes = request.app[SETTINGS], request.app[NOTES]
    detailed = may_see_details(request)
    log_root = log_root_check(settings.SYNC_LOG_DIR, detailed, notes)
    database = await database_check(request.app[DATABASE], notes)
    projection = projection_check(request.app[PROJECTOR], detailed)
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
    app[NOTES] = ReadyNotes()
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/ready", ready)
