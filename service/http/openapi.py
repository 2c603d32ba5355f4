"""GET /api/openapi.json: an OpenAPI 3.1 document of every endpoint of the route table.

Answer schemas are generated from the pydantic models the handlers build their answers
with, and parameters from the declarations the handlers parse them with; security and
defaults follow this deployment's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import package_version
from service.config import Settings
from service.http import query, schemas
from service.http.keys import OPENAPI_DOCUMENT
from service.http.query import Param

REF = "#/components/schemas/{model}"
JSON = "application/json"
# The media type the OpenAPI Initiative registered for its documents (with their version as a parameter).
OPENAPI_MEDIA = "application/vnd.oai.openapi+json"
OPENAPI_VERSION = "3.1.0"


ANY_JSON: Literal["any json"] = "any json"
EVENT_STREAM: Literal["event stream"] = "event stream"
PAGE: Literal["html page"] = "html page"
ASSET: Literal["page asset"] = "page asset"
# What a response holds: a model; None: text; ANY_JSON: a JSON object of no stated shape;
# EVENT_STREAM: Server-Sent Events (text/event-stream); PAGE: an HTML page; ASSET: a script or
# style sheet of a page.
Content = type[BaseModel] | Literal["any json", "event stream", "html page", "page asset"] | None


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint as the document states it."""

    method: str
    path: str
    summary: str
    responses: dict[int, tuple[str, Content]]  # status -> (description, content)
    params: tuple[Param, ...] = ()
    auth: Literal["api", "stream", "webhook", "none"] = "api"  # stream: the API key, or it as ?access_token=
    body: type[BaseModel] | None = None
    tags: tuple[str, ...] = field(default=("read",))
    validators: bool = False  # 200 carries an ETag; If-None-Match naming it is a 304 (middleware/caching.py)
    media: dict[str, dict[str, Any]] = field(default_factory=dict)  # further content types of the 200 answer
    operation_id: str = ""  # set by the route table from its handler's name (service.http.routes.OPERATIONS)


BAD = (400, ("a parameter is malformed; the error names it", schemas.ErrorAnswer))
UNAUTHORIZED = (401, ("API_KEYS is set and the bearer key is missing or wrong", schemas.ErrorAnswer))
NOT_FOUND = (404, ("unknown user, or the device is not that user's", schemas.ErrorAnswer))
UNAVAILABLE = (503, ("the database is unavailable; retry later", schemas.ErrorAnswer))


ETAG_HEADER = {
    "ETag": {
        "description": "weak entity tag of the answer; send it back as If-None-Match to get a 304 while it holds",
        "schema": {"type": "string", "pattern": '^W/"[0-9a-f]{32}"$'},
    }
}
NOT_MODIFIED = "If-None-Match names the answer's current ETag (or is *): the stored answer holds; no body"
CSV = "text/csv"
CSV_MEDIA = {
    CSV: {
        "schema": {"type": "string", "description": "RFC 4180 CSV, UTF-8, CRLF line ends, a header row first"},
        "example": "deviceId,sensorId,sensorName,unit,recordedAt,value,rawValue,isAlarm,isLine\r\n"
        "2864,11923,Level,mm,2019-05-10T14:16:21,28.6,2.7434,false,true\r\n",
    }
}


def read_operation(
    path: str,
    summary: str,
    model: type[BaseModel],
    params: tuple[Param, ...],
    media: dict[str, dict[str, Any]] | None = None,
) -> Operation:
    """A GET of the read API answering `model` (and `media`), with validators and the read API's error answers."""
    responses: dict[int, tuple[str, Content]] = {200: ("OK", model)}
    responses.update([BAD, UNAUTHORIZED, NOT_FOUND, UNAVAILABLE])
    return Operation("get", path, summary, responses, params, validators=True, media=media or {})


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
    if model == EVENT_STREAM:
        return {"text/event-stream": {"schema": {"type": "string"}}}
    if model == PAGE:
        return {"text/html": {"schema": {"type": "string"}}}
    if model == ASSET:
        return {kind: {"schema": {"type": "string"}} for kind in ("text/javascript", "text/css")}
    return {JSON: {"schema": refs[model]}}


def _security(op: Operation, settings: Settings) -> list[dict[str, list[str]]]:
    if op.auth == "api" and settings.API_KEYS:
        return [{"apiKey": []}]
    if op.auth == "stream" and settings.API_KEYS:
        return [{"apiKey": []}, {"accessToken": []}]
    if op.auth == "webhook":
        needed = {"webhookToken": bool(settings.WEBHOOK_TOKEN), "webhookSignature": bool(settings.PUSH_WEBHOOK_SECRET)}
        return [{name: [] for name, on in needed.items() if on}] if any(needed.values()) else []
    return []


def _operation(op: Operation, settings: Settings, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.operation_id,
        "tags": list(op.tags),
        "parameters": [_parameter(p, settings) for p in op.params],
        "responses": {str(s): {"description": d, "content": _content(m, refs)} for s, (d, m) in op.responses.items()},
        "security": _security(op, settings),
    }
    if 200 in op.responses:
        doc["responses"]["200"]["content"].update(op.media)
    if op.validators:
        doc["responses"]["200"]["headers"] = ETAG_HEADER
        doc["responses"]["304"] = {"description": NOT_MODIFIED, "headers": ETAG_HEADER}
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": {JSON: {"schema": refs[op.body]}}}
    return doc


def build_document(settings: Settings, operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these operations (service.http.routes.OPERATIONS) for these settings."""
    ids = [op.operation_id for op in operations]
    if "" in ids or len(set(ids)) != len(ids):
        raise ValueError(f"every operation needs an operationId of its own: {sorted(ids)}")
    answers = {m for op in operations for _, m in op.responses.values() if isinstance(m, type)}
    bodies = {op.body for op in operations if op.body is not None}
    keyed = [(m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)]
    keyed += [(m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)]
    key_map, defs = models_json_schema(keyed, ref_template=REF)  # type: ignore[arg-type]
    refs: dict[type[BaseModel], dict[str, Any]] = {m: s for (m, _), s in key_map.items()}  # type: ignore[misc]
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op, settings, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "TLINK push data service",
            "version": package_version(),
            "description": "Event-sourced store of TLINK pushes: webhook, read API over read models and log files.",
        },
        # Relative: the paths start at the root of whichever address served this document.
        "servers": [{"url": "/", "description": "the service that serves this document"}],
        "paths": paths,
        "components": {
            "schemas": {**_with_json_values(defs.get("$defs", {})), "JsonValue": schemas.JSON_VALUE},
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "one of API_KEYS"},
                "webhookToken": {"type": "apiKey", "in": "query", "name": "token", "description": "WEBHOOK_TOKEN"},
                "accessToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "access_token",
                    "description": "one of API_KEYS, for clients that cannot send headers (EventSource); only on"
                    " the stream, and it reaches access logs and proxies: prefer the header",
                },
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-TLink-Signature",
                    "description": "sha256=<hex HMAC-SHA256 of the raw body with PUSH_WEBHOOK_SECRET>",
                },
            },
        },
    }


async def openapi_document(request: web.Request) -> web.Response:
    """GET /api/openapi.json: the document built for the app at its creation, as the OpenAPI media type,
    or as application/json for a client whose Accept header prefers that."""
    if query.prefers(request.headers.get("Accept", ""), JSON, OPENAPI_MEDIA):
        media = JSON
    else:
        media = f"{OPENAPI_MEDIA}; version={OPENAPI_VERSION.rsplit('.', 1)[0]}"
    return web.Response(body=request.app[OPENAPI_DOCUMENT], headers={"Content-Type": media, "Vary": "Accept"})
