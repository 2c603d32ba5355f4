"""GET /api/openapi.json: a valid OpenAPI 3.1 document of every route, and real answers validate against it.

`api_get` and `check_answer` are used by the other read API tests, so every answer they
see is checked against the document.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from functools import cache
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator

from service.config import load_settings
from service.http.openapi import build_document
from service.http.routes import OPERATIONS
from tests.conftest import fixture_bytes

SAMPLE = fixture_bytes("sample_push.json")


@cache
def document() -> dict[str, Any]:
    """The document of a default deployment (answer schemas do not depend on settings)."""
    return build_document(load_settings(API_KEYS=[]), OPERATIONS)


def _template(method: str, path: str) -> str:
    for template, operations in document()["paths"].items():
        pattern = "^" + re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method in operations:
            return template
    raise AssertionError(f"{method.upper()} {path} is not in the OpenAPI document")


def check_answer(method: str, path: str, status: int, body: Any) -> None:
    """The body validates against the document's schema for this operation and status."""
    operation = document()["paths"][_template(method, path)][method]
    assert str(status) in operation["responses"], f"{status} of {method.upper()} {path} is not documented"
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": document()["components"]}).validate(body)


async def api_get(client: Any, url: str, status: int = 200, **kwargs: Any) -> Any:
    """GET, expect `status`, check the answer against the document, return its JSON."""
    resp = await client.get(url, **kwargs)
    body = await resp.json()
    assert resp.status == status, body
    check_answer("get", resp.url.path, resp.status, body)
    return body


def test_document_is_openapi_3_1_with_valid_schemas():
    doc = document()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"]
    for schema in doc["components"]["schemas"].values():
        OAS31Validator.check_schema({**schema, "components": doc["components"]})
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs <= set(doc["components"]["schemas"])


def test_every_path_parameter_is_declared():
    for template, operations in document()["paths"].items():
        for operation in operations.values():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", template)), template


async def test_every_route_of_the_app_is_documented_and_nothing_else(app_client):
    client = await app_client()
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in client.server.app.router.routes()
        if route.method not in ("HEAD", "OPTIONS")
    }
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert routes == documented


async def test_the_served_document_follows_the_settings(app_client):
    client = await app_client(API_KEYS=["k1"], WEBHOOK_TOKEN="t", DEFAULT_PAGE_SIZE=7, MAX_HISTORY_LIMIT=9)
    resp = await client.get("/api/openapi.json", headers={"Authorization": "Bearer k1"})
    assert resp.status == 200
    doc = await resp.json()
    devices = doc["paths"]["/api/users/{userId}/devices"]["get"]
    assert devices["security"] == [{"apiKey": []}]
    params = {p["name"]: p for p in devices["parameters"]}
    assert params["pageSize"]["schema"]["default"] == 7 and params["historyLimit"]["schema"]["maximum"] == 9
    assert doc["paths"]["/api/webhooks/tlink"]["post"]["security"] == [{"webhookToken": []}]
    assert doc["paths"]["/api/health"]["get"]["security"] == []
    assert doc["components"]["schemas"] == document()["components"]["schemas"]


async def test_webhook_answers_validate(app_client):
    client = await app_client()
    for expected in (200, 200):  # stored, then a duplicate
        resp = await client.post("/api/webhooks/tlink", data=SAMPLE)
        assert resp.status == expected
        check_answer("post", "/api/webhooks/tlink", resp.status, await resp.json())
    resp = await client.post("/api/webhooks/tlink", data=b"{not json")
    assert resp.status == 400
    check_answer("post", "/api/webhooks/tlink", 400, await resp.json())


@pytest.mark.parametrize(
    "url",
    ["/api/reference/device-apis", "/api/health", "/api/ready"],
)
async def test_simple_answers_validate(app_client, url):
    client = await app_client()
    await api_get(client, url)


def test_info_version_is_the_packages_and_servers_are_relative():
    doc = document()
    assert doc["info"]["version"] == importlib.metadata.version("tlink-push")
    assert [server["url"] for server in doc["servers"]] == ["/"]


def test_every_operation_has_a_stable_unique_operation_id():
    ids = {
        (method, path): operation["operationId"]
        for path, operations in document()["paths"].items()
        for method, operation in operations.items()
    }
    assert len(set(ids.values())) == len(ids)
    assert ids == {
        ("get", "/api/users/{userId}/devices"): "listDevices",
        ("get", "/api/users/{userId}/devices/{deviceId}/latest"): "latest",
        ("get", "/api/users/{userId}/devices/{deviceId}/history"): "history",
        ("get", "/api/users/{userId}/devices/{deviceId}/events"): "events",
        ("get", "/api/users/{userId}/devices/{deviceId}/coverage"): "coverage",
        ("get", "/api/users/{userId}/stream"): "stream",
        ("get", "/api/reference/device-apis"): "deviceApis",
        ("get", "/api/openapi.json"): "openapiDocument",
        ("get", "/api/health"): "health",
        ("get", "/api/ready"): "ready",
        ("post", "/api/webhooks/tlink"): "receivePush",
        ("get", "/metrics"): "metricsPage",
        ("get", "/dashboard"): "dashboard",
        ("get", "/api/docs"): "apiDocs",
        ("get", "/static/{name}"): "staticFile",
    }


def test_a_document_with_two_operations_of_one_id_is_refused():
    twin = dataclasses.replace(OPERATIONS[1], operation_id=OPERATIONS[0].operation_id)
    with pytest.raises(ValueError, match="operationId of its own"):
        build_document(load_settings(API_KEYS=[]), [OPERATIONS[0], twin])


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/vnd.oai.openapi+json"),
        ("*/*", "application/vnd.oai.openapi+json"),
        ("application/vnd.oai.openapi+json", "application/vnd.oai.openapi+json"),
        ("application/json", "application/json"),
        ("application/json, */*;q=0.1", "application/json"),
        ("application/vnd.oai.openapi+json, application/json;q=0.9", "application/vnd.oai.openapi+json"),
    ],
)
async def test_the_document_is_served_as_the_openapi_media_type_or_as_json(app_client, accept, media):
    client = await app_client()
    resp = await client.get("/api/openapi.json", headers={"Accept": accept} if accept else {})
    assert resp.status == 200 and resp.content_type == media
    assert resp.headers["Vary"] == "Accept" or "Accept" in resp.headers.getall("Vary")
    if media != "application/json":
        assert resp.headers["Content-Type"] == "application/vnd.oai.openapi+json; version=3.1"
    doc = await resp.json(content_type=None)
    assert doc["openapi"] == "3.1.0" and set(doc["paths"]) == set(document()["paths"])
    served = doc["paths"]["/api/openapi.json"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "application/vnd.oai.openapi+json"} <= set(served)
