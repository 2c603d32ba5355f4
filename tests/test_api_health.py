"""/api/health and /api/ready on the real app."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

from service.config import load_settings
from service.http.app import create_app
from service.http.keys import SERVICES
from service.http.readiness import projection_check, reasons
from service.http.schemas import Check
from tests.test_api_openapi import api_get


async def test_health_and_ready_when_all_is_well(app_client):
    client = await app_client()
    assert await api_get(client, "/api/health") == {"status": "ok"}
    body = await api_get(client, "/api/ready")
    assert body["status"] == "ready" and body["reasons"] == []
    assert body["checks"]["database"]["ok"] and body["checks"]["logRoot"]["ok"]
    assert body["checks"]["projection"] == {
        "ok": True, "behindDevices": 0, "queuedEvents": 0, "failed": None, "stoppedDevices": []
    }


async def test_not_ready_when_the_projector_stopped(app_client):
    client = await app_client()
    client.server.app[SERVICES].projector.failed = RuntimeError("bad row")
    body = await api_get(client, "/api/ready", status=503)
    assert body["status"] == "not ready" and body["reasons"] == ["projector stopped: bad row"]
    assert (await client.get("/api/health")).status == 200


async def test_not_ready_when_the_log_root_is_gone(app_client, log_root):
    client = await app_client()
    shutil.rmtree(log_root)
    log_root.write_text("not a directory")
    body = await api_get(client, "/api/ready", status=503)
    assert body["reasons"] == [f"event log: log root {log_root} does not exist"]


async def test_not_ready_when_the_database_is_unreachable(aiohttp_client, log_root):
    settings = load_settings(
        DATABASE_URL="mysql://root@127.0.0.1:1/nothing", SYNC_LOG_DIR=log_root, USE_HTTPS=False, API_KEYS=[]
    )
    client = await aiohttp_client(create_app(settings))
    body = await api_get(client, "/api/ready", status=503)
    assert body["checks"]["database"]["ok"] is False
    assert body["reasons"][0].startswith("database unreachable: ")
    assert (await client.get("/api/users/1/devices")).status == 503
    assert (await client.get("/api/health")).status == 200


def test_projection_lag_is_a_reason():
    projector = SimpleNamespace(failed=None, behind=3, queued=0, batch_limit=100, stopped={})
    check = projection_check(projector)
    assert not check.ok and reasons(Check(ok=True), Check(ok=True), check) == [
        "read models catching up: 3 device(s) behind the log"
    ]
    projector = SimpleNamespace(failed=None, behind=0, queued=101, batch_limit=100, stopped={})
    assert reasons(Check(ok=True), Check(ok=True), projection_check(projector)) == [
        "read models lagging: 101 events queued"
    ]
