"""The route table: every endpoint once, with its handler and what the OpenAPI document says of it.

The router and the OpenAPI document (service.http.openapi) are both built from ROUTES.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service.http import api, dashboard, health, openapi, query, schemas, stream
from service.http.keys import METRICS
from service.http.openapi import ANY_JSON, ASSET, EVENT_STREAM, PAGE, UNAUTHORIZED, Operation, read_operation
from service.http.webhook import WEBHOOK_PATH, receive_push

Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]

_DEVICE = (query.USER_ID, query.DEVICE_ID)
_WINDOW = (query.START_TIME, query.END_TIME, query.HISTORY_LIMIT, query.BEFORE, query.SENSOR_FILTER)


async def metrics_page(request: web.Request) -> web.StreamResponse:
    """GET /metrics"""
    return await request.app[METRICS].page(request)


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: its handler and its description."""

    operation: Operation
    handler: Handler


ROUTES = (
    Route(
        read_operation(
            "/api/users/{userId}/devices",
            "A user's devices, each with its sensors and their history from the log files",
            schemas.DevicesAnswer,
            (query.USER_ID, query.DEVICE_FILTER, *_WINDOW, query.PAGE, query.PAGE_SIZE),
        ),
        api.list_devices,
    ),
    Route(
        read_operation(
            "/api/users/{userId}/devices/{deviceId}/latest",
            "Latest reading of each sensor of a device (newest reading time)",
            schemas.LatestAnswer,
            _DEVICE,
        ),
        api.latest,
    ),
    Route(
        read_operation(
            "/api/users/{userId}/devices/{deviceId}/history",
            "History of each sensor of a device, read from the log files, newest first; as CSV with format=csv"
            " or Accept: text/csv",
            schemas.HistoryAnswer,
            (*_DEVICE, *_WINDOW, query.FORMAT),
            openapi.CSV_MEDIA,
        ),
        api.history,
    ),
    Route(
        read_operation(
            "/api/users/{userId}/devices/{deviceId}/events",
            "Raw events of a device as logged, newest first (for auditors)",
            schemas.EventsAnswer,
            (*_DEVICE, query.PAGE, query.PAGE_SIZE, query.DAY, query.EVENT_TYPE),
        ),
        api.events,
    ),
    Route(
        read_operation(
            "/api/users/{userId}/devices/{deviceId}/coverage",
            "How complete a device's readings are on one day: per sensor cadence, readings by origin, open gaps,"
            " backfill calls spent",
            schemas.CoverageAnswer,
            (*_DEVICE, query.COVERAGE_DAY),
        ),
        api.coverage,
    ),
    Route(
        Operation(
            "get",
            stream.STREAM_PATH,
            "Live events of a user's devices as Server-Sent Events, once the read models show them; resumable with"
            " Last-Event-ID (docs/stream.md)",
            {
                200: ("text/event-stream: `event: reading` / `device` / `overflow`, `id:` the event id", EVENT_STREAM),
                400: ("a malformed id, deviceId or Last-Event-ID / lastEventId", schemas.ErrorAnswer),
                401: ("API_KEYS is set and the key (Authorization or ?access_token=) is missing or wrong",
                      schemas.ErrorAnswer),
                404: ("unknown user, or a deviceId that is not that user's", schemas.ErrorAnswer),
                410: ("Last-Event-ID is of a day older than LOG_AGE: reconnect without it", schemas.ErrorAnswer),
                503: ("the database is unavailable; retry later", schemas.ErrorAnswer),
            },
            (query.USER_ID, query.STREAM_DEVICES, query.LAST_EVENT_ID),
            auth="stream",
        ),
        stream.stream,
    ),
    Route(
        Operation(
            "get",
            "/api/reference/device-apis",
            "The TLINK REST endpoints this service relates to",
            dict([(200, ("OK", schemas.ReferenceAnswer)), UNAUTHORIZED]),
            validators=True,
        ),
        api.device_apis,
    ),
    Route(
        Operation(
            "get",
            "/api/openapi.json",
            "This document",
            {200: ("OpenAPI 3.1 document (application/json when Accept prefers it)", ANY_JSON),
             401: UNAUTHORIZED[1]},
            validators=True,
            media={openapi.OPENAPI_MEDIA: {"schema": {"type": "object"}}},
        ),
        openapi.openapi_document,
    ),
    Route(
        Operation(
            "get",
            "/api/health",
            "Liveness: the process answers",
            {200: ("alive", schemas.HealthAnswer)},
            auth="none",
            tags=("operations",),
            validators=True,
        ),
        health.health,
    ),
    Route(
        Operation(
            "get",
            "/api/ready",
            "Readiness: log root writable, database reachable, projection not behind",
            {200: ("ready", schemas.ReadyAnswer), 503: ("not ready; `reasons` says why", schemas.ReadyAnswer)},
            auth="none",
            tags=("operations",),
            validators=True,
        ),
        health.ready,
    ),
    Route(
        Operation(
            "post",
            WEBHOOK_PATH,
            "Receive one TLINK push; 200 only once its event line is on disk",
            {
                200: ("stored, or a duplicate of a stored push (`duplicate`)", schemas.WebhookAnswer),
                400: ("invalid JSON or a body missing deviceId/deviceUserid/sensorsDates", schemas.ErrorAnswer),
                401: ("wrong or missing ?token= or X-TLink-Signature", schemas.ErrorAnswer),
                413: ("body over MAX_BODY_BYTES", schemas.ErrorAnswer),
                503: ("the event log cannot be written; retry later", schemas.ErrorAnswer),
            },
            auth="webhook",
            body=schemas.PushBody,
            tags=("ingest",),
        ),
        receive_push,
    ),
    Route(
        Operation(
            "get",
            "/metrics",
            "Prometheus metrics (text exposition format)",
            {200: ("metrics", None)},
            auth="none",
            tags=("operations",),
        ),
        metrics_page,
    ),
    Route(
        Operation(
            "get",
            "/dashboard",
            "The dashboard: a user's devices, latest values and live charts of their history (HTML)",
            {200: ("the page", PAGE)},
            auth="none",
            tags=("pages",),
        ),
        dashboard.dashboard,
    ),
    Route(
        Operation(
            "get",
            "/api/docs",
            "This document as an interactive reference (Swagger UI, HTML)",
            {200: ("the page", PAGE)},
            auth="none",
            tags=("pages",),
        ),
        dashboard.api_docs,
    ),
    Route(
        Operation(
            "get",
            "/static/{name}",
            "A script or style sheet of the pages (their own, or a vendored library)",
            {200: ("the file", ASSET), 404: ("no such file", schemas.ErrorAnswer)},
            (dashboard.ASSET_NAME,),
            auth="none",
            tags=("pages",),
        ),
        dashboard.static_file,
    ),
)


def operation_id(handler: Handler) -> str:
    """An operation's operationId: its handler's name in camelCase (`list_devices`: `listDevices`)."""
    first, *rest = handler.__name__.split("_")
    return first + "".join(word.capitalize() for word in rest)


OPERATIONS = tuple(dataclasses.replace(route.operation, operation_id=operation_id(route.handler)) for route in ROUTES)


def add_routes(router: web.UrlDispatcher) -> None:
    """Register every route of the table (a GET answers HEAD too)."""
    for route in ROUTES:
        op = route.operation
        if op.method == "get":
            router.add_get(op.path, route.handler)
        else:
            router.add_route(op.method.upper(), op.path, route.handler)
