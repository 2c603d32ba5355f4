"""End to end over HTTP: the webhook on the real app, on both database backends."""

from __future__ import annotations

import orjson

from eventlog.files import device_days, log_path
from tests.conftest import fixture_bytes

SAMPLE = fixture_bytes("sample_push.json")


async def test_sample_push_is_logged_and_projected(app_client, log_root):
    client = await app_client()
    resp = await client.post("/api/webhooks/tlink", data=SAMPLE)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["status"] == "ok" and answer["storedReadings"] == 3 and answer["duplicate"] is False
    [day] = device_days(log_root, 2864)
    lines = log_path(log_root, 2864, day).read_bytes().splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert line["body"] == orjson.loads(SAMPLE)
    assert line["id"] == answer["eventId"] and line["type"] == "push" and line["prev"] == "0" * 64
