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

from aiohttp import web

from service.http.api import answer
from service.http.keys import READY_NOTES, SERVICES, SETTINGS
from service.http.middleware.auth import key_ok
from service.http.readiness import bus_check, database_check, log_root_check, projection_check, reasons
from service.http.schemas import HealthAnswer, ReadyAnswer


async def health(request: web.Request) -> web.Response:
    """GET /api/health"""
    return answer(HealthAnswer, {"status": "ok"})


def may_see_details(request: web.Request) -> bool:
    """Whether the request may read the data: API_KEYS is unset, or it carries a valid key."""
    keys = request.app[SETTINGS].API_KEYS
    return not keys or key_ok(keys, request.headers.get("Authorization"))


async def ready(request: web.Request) -> web.Response:
    """GET /api/ready"""
    settings, notes, services = request.app[SETTINGS], request.app[READY_NOTES], request.app[SERVICES]
    detailed = may_see_details(request)
    log_root = log_root_check(settings.SYNC_LOG_DIR, detailed, notes)
    database = await database_check(services.db, notes)
    projection = projection_check(services.projector, detailed)
    bus = None if services.node is None else bus_check(services.node, detailed)
    found = reasons(log_root, database, projection, bus)
    data = {
        "status": "not ready" if found else "ready",
        "reasons": found,
        "checks": {
            "logRoot": log_root.model_dump(),
            "database": database.model_dump(),
            "projection": projection.model_dump(),
            **({} if bus is None else {"bus": bus.model_dump()}),
        },
    }
    return answer(ReadyAnswer, data, 503 if found else 200)
