"""GET /api/openapi.json: an OpenAPI 3.1 document of every endpoint.

Answer schemas are generated from the pydantic models the handlers build their answers
with, and parameters from the declarations the handlers parse them with; security and
defaults follow this deployment's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.config import Settings
from service.http import query, schemas
from service.http.keys import SETTINGS
from service.http.query import Param
from service.http.webhook import WEBHOOK_PATH

REF = "#/components/schemas/{model}"
JSON = "application/json"


ANY_JSON: Literal["any json"] = "any json"
# What a response holds: a model; None: text; ANY_JSON: a JSON object of no stated shape.
Content = type[BaseModel] | Literal["any json"] | None


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint as the document states it."""

    method: str
    path: str
    summary: str
    responses: dict[int, tuple[str, Content]]  # status -> (description, content)
    params: tuple[Param, ...] = ()
    auth: Literal["api", "webhook", "none"] = "api"
    body: type[BaseModel] | None = None
    tags: tuple[str, ...] = field(default=("read",))


_BAD = (400, ("a parameter is malformed; the error names it", schemas.ErrorAnswer))
_UNAUTHORIZED = (401, ("API_KEYS is set and the bearer key is missing or wrong", schemas.ErrorAnswer))
_NOT_FOUND = (404, ("unknown user, or the device is not that user's", schemas.ErrorAnswer))
_UNAVAILABLE = (503, ("the database is unavailable; retry later", schemas.ErrorAnswer))
_DEVICE = (query.USER_ID, query.DEVICE_ID)
_WINDOW = (query.START_TIME, query.END_TIME, query.HISTORY_LIMIT)


def _read(path: str, summary: str, model: type[BaseModel], params: tuple[Param, ...]) -> Operation:
    responses: dict[int, tuple[str, Content]] = {200: ("OK", model)}
    responses.update([_BAD, _UNAUTHORIZED, _NOT_FOUND, _UNAVAILABLE])
    return Operation("get", path, summary, responses, params)


OPERATIONS = (
    _read(
        "/api/users/{userId}/devices",
        "A user's devices, each with its sensors and their history from the log files",
        schemas.DevicesAnswer,
        (query.USER_ID, query.DEVICE_FILTER, *_WINDOW, query.PAGE, query.PAGE_SIZE),
    ),
    _read(
        "/api/users/{userId}/devices/{deviceId}/latest",
        "Latest reading of each sensor of a device (newest reading time)",
        schemas.LatestAnswer,
        _DEVICE,
    ),
    _read(
        "/api/users/{userId}/devices/{deviceId}/history",
        "History of each sensor of a device, read from the log files, newest first",
        schemas.HistoryAnswer,
        (*_DEVICE, *_WINDOW),
    ),
    _read(
        "/api/users/{userId}/devices/{deviceId}/events",
        "Raw events of a device as logged, newest first (for auditors)",
        schemas.EventsAnswer,
        (*_DEVICE, query.PAGE, query.PAGE_SIZE, query.DAY, query.EVENT_TYPE),
    ),
    Operation(
        "get",
        "/api/reference/device-apis",
        "The TLINK REST endpoints this service relates to",
        dict([(200, ("OK", schemas.ReferenceAnswer)), _UNAUTHORIZED]),
    ),
    Operation(
        "get",
        "/api/openapi.json",
        "This document",
        {200: ("OpenAPI 3.1 document", ANY_JSON), 401: _UNAUTHORIZED[1]},
    ),
    Operation(
        "get",
        "/api/health",
        "Liveness: the process answers",
        {200: ("alive", schemas.HealthAnswer)},
        auth="none",
        tags=("operations",),
    ),
    Operation(
        "get",
        "/api/ready",
        "Readiness: log root writable, database reachable, projection not behind",
        {200: ("ready", schemas.ReadyAnswer), 503: ("not ready; `reasons` says why", schemas.ReadyAnswer)},
        auth="none",
        tags=("operations",),
    ),
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
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics (text exposition format)",
        {200: ("metrics", None)},
        auth="none",
        tags=("operations",),
    ),
)

ANSWER_MODELS = sorted(
    {m for op in OPERATIONS for _, m in op.responses.values() if m is not None and m != ANY_JSON},
    key=lambda m: m.__name__,
)


def _parameter(param: Param, settings: Settings) -> dict[str, Any]:
    schema = dict(param.schema)
    if param is query.PAGE_SIZE:
        schema["default"] = settings.DEFAULT_PAGE_SIZE
        description = f"{param.description} to MAX_PAGE_SIZE ({settings.MAX_PAGE_SIZE}); over {query.MAX_PAGE} is a 400"
    elif param is query.PAGE:
        description = f"{param.description}; over {query.MAX_PAGE} is a 400"
    elif param is query.HISTORY_LIMIT:
        schema.update(default=settings.DEFAULT_HISTORY_LIMIT, maximum=settings.MAX_HISTORY_LIMIT)
        description = f"{param.description}; over MAX_HISTORY_LIMIT ({settings.MAX_HISTORY_LIMIT}) is a 400"
    else:
        description = param.description
    return {"name": param.name, "in": param.where, "required": param.required, "description": description,
            "schema": schema}  # fmt: skip


def _with_json_values(node: Any) -> Any:
    """The schema with each place marked schemas.ANY_JSON_MARK holding the JsonValue reference."""
    if isinstance(node, dict):
        if node.get("x-any-json"):
            return {**{k: v for k, v in node.items() if k != "x-any-json"}, **schemas.JSON_VALUE_REF}
        return {key: _with_json_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_with_json_values(value) for value in node]
    return node


def _content(model: Content, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    if model is None:
        return {"text/plain": {"schema": {"type": "string"}}}
    if model == ANY_JSON:
        return {JSON: {"schema": {"type": "object"}}}
    return {JSON: {"schema": refs[model]}}


def _security(op: Operation, settings: Settings) -> list[dict[str, list[str]]]:
    if op.auth == "api" and settings.API_KEYS:
        return [{"apiKey": []}]
    if op.auth == "webhook":
        needed = {"webhookToken": bool(settings.WEBHOOK_TOKEN), "webhookSignature": bool(settings.PUSH_WEBHOOK_SECRET)}
        return [{name: [] for name, on in needed.items() if on}] if any(needed.values()) else []
    return []


def _operation(op: Operation, settings: Settings, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.method + op.path.replace("/api", "").replace("{", "").replace("}", "").replace("/", "_"),
        "tags": list(op.tags),
        "parameters": [_parameter(p, settings) for p in op.params],
        "responses": {str(s): {"description": d, "content": _content(m, refs)} for s, (d, m) in op.responses.items()},
        "security": _security(op, settings),
    }
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": {JSON: {"schema": refs[op.body]}}}
    return doc


def build_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for these settings."""
    keyed = [(m, "serialization") for m in ANSWER_MODELS] + [(schemas.PushBody, "validation")]
    key_map, defs = models_json_schema(keyed, ref_template=REF)  # type: ignore[arg-type]
    refs: dict[type[BaseModel], dict[str, Any]] = {m: s for (m, _), s in key_map.items()}  # type: ignore[misc]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, settings, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TLINK push data service",
            "version": "1.0.0",
            "description": "Event-sourced store of TLINK pushes: webhook, read API over read models and log files.",
        },
        "paths": paths,
        "components": {
            "schemas": {**_with_json_values(defs.get("$defs", {})), "JsonValue": schemas.JSON_VALUE},
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "one of API_KEYS"},
                "webhookToken": {"type": "apiKey", "in": "query", "name": "token", "description": "WEBHOOK_TOKEN"},
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-TLink-Signature",
                    "description": "sha256=<hex HMAC-SHA256 of the raw body with PUSH_WEBHOOK_SECRET>",
                },
            },
        },
    }


def setup(app: web.Application) -> None:
    """Register GET /api/openapi.json, the document built once for the app's settings."""
    body = orjson.dumps(build_document(app[SETTINGS]))

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/api/openapi.json", openapi)
