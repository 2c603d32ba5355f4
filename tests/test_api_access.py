"""API keys and CORS on the real app: who may read, and what browsers are told."""

from __future__ import annotations

import pytest

from service.http.middleware.auth import key_ok
from tests.conftest import fixture_bytes
from tests.test_api_openapi import api_get, check_answer

SAMPLE = fixture_bytes("sample_push.json")
READS = [
    "/api/users/385/devices",
    "/api/users/385/devices/2864/latest",
    "/api/users/385/devices/2864/history",
    "/api/users/385/devices/2864/events",
    "/api/reference/device-apis",
    "/api/openapi.json",
]


@pytest.mark.parametrize("url", READS)
async def test_with_api_keys_reads_need_a_bearer_key(app_client, url):
    client = await app_client(API_KEYS=["first-key", "second-key"])
    assert (await client.post("/api/webhooks/tlink", data=SAMPLE)).status == 200  # webhook auth is its own
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "first-key"},
                    {"Authorization": "Basic Zmlyc3Qta2V5"}):  # fmt: skip
        resp = await client.get(url, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
        assert "API key" in body["error"]
        if url != "/api/openapi.json":
            check_answer("get", url, 401, body)
    for key in ("first-key", "second-key"):
        resp = await client.get(url, headers={"Authorization": f"bearer {key}"})
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("url", ["/api/health", "/api/ready"])
async def test_probes_need_no_key(app_client, url):
    client = await app_client(API_KEYS=["k"])
    await api_get(client, url)


async def test_without_api_keys_reads_are_open(app_client):
    client = await app_client()
    await client.post("/api/webhooks/tlink", data=SAMPLE)
    await api_get(client, "/api/users/385/devices")


def test_key_comparison():
    assert key_ok(["a", "bb"], "Bearer bb") and key_ok(["a"], "  bearer   a ")
    assert not key_ok(["a"], None) and not key_ok(["a"], "Bearer ") and not key_ok(["a"], "Bearer ab")


async def test_cors_allows_every_origin_by_default(app_client):
    client = await app_client(API_KEYS=["k"])
    origin = {"Origin": "https://dashboard.example"}
    resp = await client.options(
        "/api/users/385/devices",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"},
    )
    assert resp.status == 204  # a preflight carries no key and needs none
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    resp = await client.get("/api/users/385/devices", headers={**origin, "Authorization": "Bearer k"})
    assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == "*"  # errors are readable too
    resp = await client.get("/api/users/385/devices", headers=origin)
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.get("/api/health")
    assert "Access-Control-Allow-Origin" not in resp.headers  # not a cross-origin request


async def test_cors_with_an_allow_list(app_client):
    client = await app_client(CORS_ALLOWED_ORIGINS=["https://a.example", "https://b.example"])
    preflight = {"Access-Control-Request-Method": "POST"}
    resp = await client.options("/api/webhooks/tlink", headers={"Origin": "https://b.example", **preflight})
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "https://b.example"
    resp = await client.options("/api/webhooks/tlink", headers={"Origin": "https://evil.example", **preflight})
    assert resp.status == 403 and "https://evil.example" in (await resp.json())["error"]
    resp = await client.get("/api/health", headers={"Origin": "https://a.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "Origin" in resp.headers.getall("Vary")
    resp = await client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_is_only_for_the_api(app_client):
    client = await app_client()
    resp = await client.get("/metrics", headers={"Origin": "https://a.example"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
