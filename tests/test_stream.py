"""GET /api/users/<userId>/stream end to end, on both backends: the real app, real pushes and syncs.

Events are read as Server-Sent Events off the wire; the read timeouts below only keep a
broken stream from hanging the test, nothing asserts how fast an event comes.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from eventlog.events import new_event_id
from service.http.keys import STREAM_STATS
from tests.test_api_openapi import api_get, check_answer
from tests.test_api_read import DEVICE, USER, push, push_body, sync_device

STREAM = f"/api/users/{USER}/stream"
OTHER_DEVICE = 2865
WAIT = 20.0  # seconds a stream may stay silent before the test fails instead of hanging


class Sse:
    """One open stream, read message by message."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp

    async def next(self) -> dict[str, Any]:
        """The next message or comment: {"event", "id", "data"} or {"comment"}."""
        fields: dict[str, Any] = {}
        while True:
            line = (await asyncio.wait_for(self.resp.content.readline(), WAIT)).decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line == "":
                if fields:
                    if "data" in fields:
                        fields["data"] = orjson.loads(fields["data"])
                    return fields
                continue
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            name, _, value = line.partition(": ")
            fields[name] = value

    async def event(self) -> dict[str, Any]:
        """The next message, comments skipped."""
        while "comment" in (found := await self.next()):
            pass
        return found

    async def until_open(self) -> list[dict[str, Any]]:
        """The messages before the `: stream open` comment (the backlog of a resume)."""
        backlog = []
        while (found := await self.next()).get("comment") != "stream open":
            if "comment" not in found:
                backlog.append(found)
        return backlog

    async def rest(self) -> bytes:
        return await asyncio.wait_for(self.resp.content.read(), WAIT)

    def close(self) -> None:
        self.resp.close()


async def open_stream(client: Any, url: str = STREAM, **kwargs: Any) -> Sse:
    resp = await client.get(url, **kwargs)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return Sse(resp)


async def started(app_client: Any, **settings: Any) -> Any:
    """The app with the user known (a first push of DEVICE)."""
    client = await app_client(**settings)
    await push(client, push_body("2026-05-01 09:00:00", {1: "0"}))
    return client


def sent_at(n: int) -> str:
    return f"2026-05-01 10:{n // 60:02d}:{n % 60:02d}"


async def test_an_event_comes_once_the_read_models_show_it(app_client):
    client = await started(app_client)
    sse = await open_stream(client)
    assert await sse.until_open() == []
    answer = await push(client, push_body(sent_at(1), {1: "41.5", 2: "7"}))
    message = await sse.event()
    assert message["event"] == "reading" and message["id"] == answer["eventId"]
    data = message["data"]
    assert data["deviceId"] == DEVICE and data["eventId"] == answer["eventId"] and data["type"] == "push"
    assert data["readings"][0] == {"sensorId": 1, "recordedAt": "2026-05-01T10:00:01", "sensorTimestamp": "10:00:01",
                                   "value": "41.5", "rawValue": "41.5", "isAlarm": False, "isLine": True}  # fmt: skip
    latest = await api_get(client, f"/api/users/{USER}/devices/{DEVICE}/latest")  # read right after the message
    assert {s["sensorId"]: s["latestValue"] for s in latest["sensors"]} == {1: "41.5", 2: "7"}
    sse.close()


async def test_the_device_filter(app_client):
    client = await started(app_client)
    await push(client, push_body(sent_at(0), {1: "x"}, device_id=OTHER_DEVICE))
    sse = await open_stream(client, STREAM, params=[("deviceId", str(OTHER_DEVICE))])
    await sse.until_open()
    await push(client, push_body(sent_at(1), {1: "mine? no"}))
    other = await push(client, push_body(sent_at(2), {1: "yes"}, device_id=OTHER_DEVICE))
    message = await sse.event()
    assert message["id"] == other["eventId"] and message["data"]["deviceId"] == OTHER_DEVICE
    sse.close()
    both = await open_stream(client, STREAM, params=[("deviceId", str(DEVICE)), ("deviceId", str(OTHER_DEVICE))])
    await both.until_open()
    ids = []
    for device_id in (OTHER_DEVICE, DEVICE):
        ids.append((await push(client, push_body(sent_at(3), {1: "a"}, device_id=device_id)))["eventId"])
    assert [(await both.event())["id"] for _ in ids] == ids
    both.close()


async def test_a_resume_gets_exactly_the_missed_events_then_the_live_ones(app_client):
    client = await started(app_client)
    await push(client, push_body(sent_at(0), {1: "x"}, device_id=OTHER_DEVICE))
    sse = await open_stream(client)
    await sse.until_open()
    seen = []
    for n in range(3):
        answer = await push(client, push_body(sent_at(n + 1), {1: str(n)}, device_id=(DEVICE, OTHER_DEVICE)[n % 2]))
        seen.append(answer["eventId"])
        assert (await sse.event())["id"] == answer["eventId"]
    sse.close()  # the client goes away mid-stream
    missed = []
    for n in range(5):
        answer = await push(client, push_body(sent_at(n + 10), {1: f"m{n}"}, device_id=(DEVICE, OTHER_DEVICE)[n % 2]))
        missed.append(answer["eventId"])
    again = await open_stream(client, headers={"Last-Event-ID": seen[-1]})
    backlog = await again.until_open()
    assert [m["id"] for m in backlog] == missed
    assert [m["data"]["readings"][0]["value"] for m in backlog] == [f"m{n}" for n in range(5)]
    live = await push(client, push_body(sent_at(30), {1: "live"}))
    message = await again.event()
    assert message["id"] == live["eventId"] and message["data"]["readings"][0]["value"] == "live"
    again.close()
    # The query form, as a first connection of an EventSource would carry it; the header wins over it.
    by_query = await open_stream(client, f"{STREAM}?lastEventId={missed[2]}")
    assert [m["id"] for m in await by_query.until_open()] == [*missed[3:], live["eventId"]]
    by_query.close()
    both = await open_stream(client, f"{STREAM}?lastEventId={seen[0]}", headers={"Last-Event-ID": missed[3]})
    assert [m["id"] for m in await both.until_open()] == [missed[4], live["eventId"]]
    both.close()


async def test_a_resume_from_an_id_older_than_retention_is_410_and_a_malformed_one_400(app_client):
    client = await started(app_client, LOG_AGE=3)
    old = datetime.now(UTC) - timedelta(days=5)
    expired = new_event_id(int(old.timestamp() * 1000))
    body = await api_get(client, STREAM, 410, headers={"Last-Event-ID": expired})
    assert "LOG_AGE" in body["error"]
    recent = new_event_id(int((datetime.now(UTC) - timedelta(days=2)).timestamp() * 1000))
    resumed = await open_stream(client, headers={"Last-Event-ID": recent})
    assert len(await resumed.until_open()) == 1  # the first push, from today
    resumed.close()
    for bad in ("nonsense", "0190a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b", expired + "0"):  # not a UUID, a UUIDv4, too long
        body = await api_get(client, STREAM, 400, headers={"Last-Event-ID": bad})
        assert "Last-Event-ID" in body["error"]
    await api_get(client, f"{STREAM}?lastEventId=nonsense", 400)


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/api/users/abc/stream", 400),
        ("/api/users/999/stream", 404),
        (f"{STREAM}?deviceId=x", 400),
        (f"{STREAM}?deviceId={DEVICE}&deviceId=0", 400),
        (f"{STREAM}?deviceId=77", 404),
    ],
)
async def test_bad_input_is_a_clear_4xx(app_client, url, status):
    client = await started(app_client)
    body = await api_get(client, url, status)
    assert body["error"]


async def test_a_client_that_falls_behind_gets_overflow_and_resumes_by_id(app_client):
    client = await started(app_client, STREAM_QUEUE_EVENTS=1)
    sse = await open_stream(client)
    await sse.until_open()
    stored: list[str] = []
    for round_ in range(50):  # concurrent pushes share projector batches: more than one event at once
        answers = await asyncio.gather(
            *(push(client, push_body(sent_at(round_ * 20 + n), {1: str(n)}, device_id=DEVICE + n)) for n in range(20))
        )
        stored += [a["eventId"] for a in answers]
        if client.server.app[STREAM_STATS].clients_dropped:
            break
    messages = []
    while (found := await sse.event())["event"] != "overflow":
        messages.append(found)
    assert await sse.rest() == b""  # closed after the overflow
    last = found["data"]["lastEventId"]
    assert "STREAM_QUEUE_EVENTS" in found["data"]["error"]
    assert last == (messages[-1]["id"] if messages else None)
    metrics = await (await client.get("/metrics")).text()
    assert "tlink_stream_clients_dropped_total 1.0" in metrics
    # Resuming by id gives the rest (STREAM_QUEUE_EVENTS bounds only the live queue, not a backlog).
    resumed = await open_stream(client, headers={"Last-Event-ID": last or stored[0]})
    got = [m["id"] for m in messages] + [m["id"] for m in await resumed.until_open()]
    assert sorted(set(got) | ({stored[0]} if last is None else set())) == sorted(stored)
    resumed.close()


async def test_heartbeat_comments_on_an_idle_stream(app_client):
    client = await started(app_client, STREAM_HEARTBEAT_SECONDS=0.05)
    sse = await open_stream(client)
    await sse.until_open()
    assert await sse.next() == {"comment": "heartbeat"}
    assert await sse.next() == {"comment": "heartbeat"}
    sse.close()


async def test_api_keys_by_header_or_access_token(app_client):
    client = await started(app_client, API_KEYS=["k1", "k2"])
    (await open_stream(client, f"{STREAM}?access_token=k2")).close()
    (await open_stream(client, headers={"Authorization": "Bearer k1"})).close()
    for url in (STREAM, f"{STREAM}?access_token=wrong", f"{STREAM}?access_token="):
        resp = await client.get(url)
        assert resp.status == 401
        check_answer("get", STREAM, 401, await resp.json())
    resp = await client.get(f"/api/users/{USER}/devices?access_token=k1")  # only the stream takes it
    assert resp.status == 401
    resp = await client.get(f"{STREAM}?access_token=wrong", headers={"Authorization": "Bearer k1"})
    assert resp.status == 200  # the header is what counts when both are sent
    resp.close()


async def test_a_sync_that_changes_names_or_units_is_a_device_event(app_client):
    client = await started(app_client)
    sse = await open_stream(client)
    await sse.until_open()
    await sync_device(client, DEVICE, {1: "2026-05-01 11:00:00"})
    device, reading = await sse.event(), await sse.event()
    assert device["event"] == "device" and "id" not in device and reading["event"] == "reading"
    assert device["data"]["deviceName"] == f"Tank {DEVICE}"
    assert device["data"]["sensors"] == [{"sensorId": 1, "sensorName": "Sensor 1", "unit": "mm"}]
    assert reading["id"] == device["data"]["eventId"] == reading["data"]["eventId"]
    await sync_device(client, DEVICE, {1: "2026-05-01 11:05:00"})  # the same names and units: readings only
    assert (await sse.event())["event"] == "reading"
    await sync_device(client, DEVICE, {1: None, 2: None})  # a new sensor, no readings
    changed = await sse.event()
    assert changed["event"] == "device" and "id" in changed
    assert [s["sensorId"] for s in changed["data"]["sensors"]] == [1, 2]
    sse.close()


async def test_metrics_count_open_streams_and_events_sent(app_client):
    client = await started(app_client)
    streams = [await open_stream(client) for _ in range(2)]
    for sse in streams:
        await sse.until_open()
    await push(client, push_body(sent_at(1), {1: "1"}))
    for sse in streams:
        assert (await sse.event())["event"] == "reading"
    metrics = await (await client.get("/metrics")).text()
    assert "tlink_stream_open 2.0" in metrics and "tlink_stream_events_sent_total 2.0" in metrics
    for sse in streams:
        sse.close()
    await push(client, push_body(sent_at(2), {1: "2"}))  # a write to a closed client ends its handler
    deadline = time.monotonic() + WAIT
    while "tlink_stream_open 0.0" not in await (await client.get("/metrics")).text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
