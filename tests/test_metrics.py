"""GET /metrics: every metric exists, is well formed, and moves when what it measures happens."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventlog.events import PUSH, ZERO_HASH, Event, encode_line, new_event_id
from eventlog.files import log_path
from eventlog.store import LogUnavailable
from projections import views
from projections.db import DatabaseUnavailable
from service.http.app import create_app
from service.http.keys import RETENTION_STATS, SERVICES, STREAM_HUB, SYNC_STATS
from service.jobs.sync import SyncReport, UserReport
from tests.conftest import fixture_bytes

SAMPLE = fixture_bytes("sample_push.json")
WEBHOOK = "/api/webhooks/tlink"
LATEST = "/api/users/385/devices/2864/latest"  # the sample push's user and device
LATEST_ROUTE = "/api/users/{userId}/devices/{deviceId}/latest"

# Every metric the service exports: name as written in the text format -> type.
EXPECTED = {
    "tlink_webhook_requests_total": "counter",
    "tlink_webhook_duration_seconds": "histogram",
    "tlink_webhook_readings_stored_total": "counter",
    "tlink_webhook_dead_lettered_total": "counter",
    "tlink_log_appended_lines_total": "counter",
    "tlink_log_appended_bytes_total": "counter",
    "tlink_log_fsync_duration_seconds": "histogram",
    "tlink_log_group_commit_lines": "histogram",
    "tlink_log_torn_tails_repaired_total": "counter",
    "tlink_log_torn_quarantined_bytes_total": "counter",
    "tlink_log_foreign_files_moved_total": "counter",
    "tlink_projection_devices_behind": "gauge",
    "tlink_projection_queued_events": "gauge",
    "tlink_projection_applied_events_total": "counter",
    "tlink_projection_last_applied_timestamp_seconds": "gauge",
    "tlink_projection_failures_total": "counter",
    "tlink_projection_failed": "gauge",
    "tlink_projection_stopped_devices": "gauge",
    "tlink_projection_database_available": "gauge",
    "tlink_sync_runs_total": "counter",
    "tlink_sync_runs_skipped_total": "counter",
    "tlink_sync_failures_total": "counter",
    "tlink_sync_devices_unchanged_total": "counter",
    "tlink_sync_token_refreshes_total": "counter",
    "tlink_sync_running": "gauge",
    "tlink_sync_duration_seconds": "histogram",
    "tlink_sync_run_devices": "histogram",
    "tlink_sync_run_readings": "histogram",
    "tlink_retention_runs_total": "counter",
    "tlink_retention_files_deleted_total": "counter",
    "tlink_retention_files_kept_total": "counter",
    "tlink_http_requests_total": "counter",
    "tlink_http_request_duration_seconds": "histogram",
    "tlink_build_info": "gauge",
    "process_resident_memory_bytes": "gauge",
}


@pytest.fixture
def database_url(sqlite_url):
    """Metrics do not depend on the backend: SQLite only, for speed."""
    return sqlite_url


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for f in self.families.values() for s in f.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when it is absent."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def type_of(self, exposed: str) -> str | None:
        """The declared type of a metric, by the name it is exposed under."""
        for family in self.families.values():
            if any(s.name in (exposed, f"{exposed}_count") for s in family.samples):
                return family.type
        return None


async def scrape(client) -> Scrape:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return Scrape(await resp.text())


def outcome(scraped: Scrape, name: str) -> float:
    return scraped("tlink_webhook_requests_total", outcome=name)


async def test_every_metric_is_exported_with_its_type(app_client):
    client = await app_client()
    assert (await client.post(WEBHOOK, data=SAMPLE)).status == 200
    assert (await client.get(LATEST)).status == 200
    scraped = await scrape(client)
    for name, kind in EXPECTED.items():
        assert scraped.type_of(name) == kind, name
    for name in ("ok", "duplicate", "invalid", "too_large", "unauthorized", "unavailable", "error", "aborted"):
        assert ("tlink_webhook_requests_total", (("outcome", name),)) in scraped.samples
    [build] = scraped.families["tlink_build_info"].samples
    assert build.value == 1 and build.labels["version"]


async def test_a_push_counts_ok_readings_and_log_writes(app_client):
    client = await app_client()
    before = await scrape(client)
    assert (await client.post(WEBHOOK, data=SAMPLE)).status == 200
    after = await scrape(client)
    assert outcome(after, "ok") - outcome(before, "ok") == 1
    assert after("tlink_webhook_duration_seconds_count") == before("tlink_webhook_duration_seconds_count") + 1
    assert after("tlink_webhook_readings_stored_total") == 3
    assert after("tlink_log_appended_lines_total") == 1
    [line_file] = (client.server.app[SERVICES].store.root / "2864").iterdir()
    assert after("tlink_log_appended_bytes_total") == line_file.stat().st_size
    assert after("tlink_log_fsync_duration_seconds_count") == 1
    assert after("tlink_log_fsync_duration_seconds_sum") > 0
    assert after("tlink_log_group_commit_lines_sum") == 1


async def test_a_repeated_push_counts_as_duplicate_and_stores_nothing(app_client):
    client = await app_client()
    await client.post(WEBHOOK, data=SAMPLE)
    assert (await client.post(WEBHOOK, data=SAMPLE)).status == 200
    scraped = await scrape(client)
    assert outcome(scraped, "ok") == 1 and outcome(scraped, "duplicate") == 1
    assert scraped("tlink_webhook_readings_stored_total") == 3
    assert scraped("tlink_log_appended_lines_total") == 1


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"deviceId": "x"}'])
async def test_an_invalid_body_counts_as_invalid_and_dead_lettered(app_client, body):
    client = await app_client()
    assert (await client.post(WEBHOOK, data=body)).status == 400
    scraped = await scrape(client)
    assert outcome(scraped, "invalid") == 1
    assert scraped("tlink_webhook_dead_lettered_total") == 1
    assert scraped("tlink_log_appended_lines_total") == 0


async def test_an_oversize_body_counts_as_too_large(app_client):
    client = await app_client(MAX_BODY_BYTES=1024)
    assert (await client.post(WEBHOOK, data=b" " * 2048 + SAMPLE)).status == 413
    scraped = await scrape(client)
    assert outcome(scraped, "too_large") == 1
    assert scraped("tlink_webhook_dead_lettered_total") == 0


async def test_a_wrong_token_counts_as_unauthorized_and_is_not_dead_lettered(app_client):
    client = await app_client(WEBHOOK_TOKEN="right")
    assert (await client.post(WEBHOOK, params={"token": "wrong"}, data=b"{bad")).status == 401
    scraped = await scrape(client)
    assert outcome(scraped, "unauthorized") == 1
    assert scraped("tlink_webhook_dead_lettered_total") == 0


async def test_an_unwritable_log_counts_as_unavailable(app_client, monkeypatch):
    client = await app_client()

    def refuse(event):
        raise LogUnavailable("disk full")

    monkeypatch.setattr(client.server.app[SERVICES].store, "queue", refuse)
    assert (await client.post(WEBHOOK, data=SAMPLE)).status == 503
    assert outcome(await scrape(client), "unavailable") == 1


async def test_an_unexpected_failure_counts_as_error(app_client, monkeypatch):
    client = await app_client()

    async def crash(body):
        raise RuntimeError("bug")

    monkeypatch.setattr(client.server.app[SERVICES].ingestor, "push", crash)
    assert (await client.post(WEBHOOK, data=SAMPLE)).status == 500
    assert outcome(await scrape(client), "error") == 1


async def test_other_paths_are_not_counted_as_pushes(app_client):
    client = await app_client()
    await client.get("/nowhere")
    await client.get(WEBHOOK)
    scraped = await scrape(client)
    assert sum(v for (name, _), v in scraped.samples.items() if name == "tlink_webhook_requests_total") == 0


def requests(scraped: Scrape, **labels: str) -> float:
    """tlink_http_requests_total summed over the series that have these labels."""
    wanted = set(labels.items())
    return sum(
        v for (name, have), v in scraped.samples.items() if name == "tlink_http_requests_total" and wanted <= set(have)
    )


async def test_a_read_request_is_counted_and_timed_under_its_route_template(app_client):
    client = await app_client()
    await client.post(WEBHOOK, data=SAMPLE)
    for _ in range(3):
        assert (await client.get(LATEST)).status == 200
    assert (await client.get("/api/users/385/devices")).status == 200
    scraped = await scrape(client)
    assert scraped("tlink_http_requests_total", route=LATEST_ROUTE, method="GET", status="2xx") == 3
    assert scraped("tlink_http_request_duration_seconds_count", route=LATEST_ROUTE, method="GET") == 3
    assert scraped("tlink_http_request_duration_seconds_sum", route=LATEST_ROUTE, method="GET") > 0
    assert scraped("tlink_http_request_duration_seconds_bucket", route=LATEST_ROUTE, method="GET", le="+Inf") == 3
    assert scraped("tlink_http_requests_total", route="/api/users/{userId}/devices", method="GET", status="2xx") == 1
    # the raw paths never become labels
    assert "/api/users/385" not in scraped.text and "2864" not in scraped.text


async def test_unmatched_paths_share_one_label_whatever_the_path_or_method(app_client):
    client = await app_client()
    paths = [f"/scan/{i}/wp-login.php" for i in range(30)] + ["/nowhere", "/api/users/385/devices/2864/latest/x"]
    for path in paths:
        assert (await client.get(path)).status == 404
    assert (await client.request("PROPFIND", "/dav")).status == 404  # a method HTTP parsers know, no route has
    assert (await client.request("DELETE", LATEST)).status == 405  # a route's path, not its method
    scraped = await scrape(client)
    assert scraped("tlink_http_requests_total", route="unmatched", method="GET", status="4xx") == len(paths)
    assert scraped("tlink_http_requests_total", route="unmatched", method="other", status="4xx") == 1
    assert scraped("tlink_http_requests_total", route="unmatched", method="DELETE", status="4xx") == 1
    assert scraped("tlink_http_request_duration_seconds_count", route="unmatched", method="GET") == len(paths)
    routes = {dict(labels)["route"] for (name, labels), _ in scraped.samples.items() if name.startswith("tlink_http_")}
    assert routes == {"unmatched"}  # (the scrape itself is counted once it is answered, in the next one)
    assert "wp-login" not in scraped.text and "PROPFIND" not in scraped.text


async def test_each_answer_is_counted_in_its_status_class(app_client, monkeypatch):
    client = await app_client()
    await client.post(WEBHOOK, data=SAMPLE)
    first = await client.get(LATEST)
    assert first.status == 200
    assert (await client.get(LATEST, headers={"If-None-Match": first.headers["ETag"]})).status == 304
    assert (await client.get("/api/users/385/devices/abc/latest")).status == 400
    assert (await client.get("/api/users/385/devices/9999/latest")).status == 404

    async def crash(db, device_ids):
        raise RuntimeError("bug")

    monkeypatch.setattr(views, "sensors_of", crash)
    assert (await client.get(LATEST)).status == 500
    scraped = await scrape(client)
    for status, count in {"2xx": 1, "3xx": 1, "4xx": 2, "5xx": 1}.items():
        assert scraped("tlink_http_requests_total", route=LATEST_ROUTE, method="GET", status=status) == count, status
    assert scraped("tlink_http_request_duration_seconds_count", route=LATEST_ROUTE, method="GET") == 5


async def test_webhook_pushes_are_counted_once_as_pushes_not_as_requests(app_client):
    client = await app_client()
    await client.post(WEBHOOK, data=SAMPLE)
    await client.post(WEBHOOK, data=b"{bad")
    assert (await client.get(WEBHOOK)).status == 405
    await client.get("/metrics")
    scraped = await scrape(client)
    assert outcome(scraped, "ok") == 1 and outcome(scraped, "invalid") == 1
    assert requests(scraped, route=WEBHOOK) == 0
    assert requests(scraped, route="unmatched", method="GET", status="4xx") == 1  # the GET: no route has it
    assert scraped("tlink_http_requests_total", route="/metrics", method="GET", status="2xx") == 1


async def test_a_live_stream_is_counted_when_it_ends_but_not_timed(app_client):
    client = await app_client()
    await client.post(WEBHOOK, data=SAMPLE)
    stream = await client.get("/api/users/385/stream")
    assert stream.status == 200
    await stream.content.readany()
    client.server.app[STREAM_HUB].close()  # as at shutdown: the service ends the stream
    assert await stream.content.read() == b""
    route = "/api/users/{userId}/stream"
    scraped = await wait_for(client, lambda s: requests(s, route=route) == 1)
    assert scraped("tlink_http_requests_total", route=route, method="GET", status="2xx") == 1
    assert not [labels for (name, labels) in scraped.samples if name.startswith("tlink_http_request_duration")
                and dict(labels)["route"] == route]  # fmt: skip


def write_torn_log(root, device_id: int = 2864) -> int:
    """A log file with one good line and a torn one; returns the torn bytes."""
    event = Event(new_event_id(), PUSH, datetime.now(UTC), device_id, 385, orjson.loads(SAMPLE))
    path = log_path(root, device_id, event.day)
    path.parent.mkdir(parents=True)
    torn = b'{"v":1,"id":"half a li'
    path.write_bytes(encode_line(event, ZERO_HASH) + b"\n" + torn)
    return len(torn)


async def test_a_torn_tail_repaired_at_start_is_counted(app_client, log_root):
    torn = write_torn_log(log_root)
    client = await app_client()
    scraped = await scrape(client)
    assert scraped("tlink_log_torn_tails_repaired_total") == 1
    assert scraped("tlink_log_torn_quarantined_bytes_total") == torn


async def wait_for(client, predicate, timeout: float = 5.0) -> Scrape:
    """Scrape until predicate(scrape) holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        scraped = await scrape(client)
        if predicate(scraped) or loop.time() > deadline:
            return scraped
        await asyncio.sleep(0.05)


async def test_projection_lag_shows_while_the_database_is_down(app_client, monkeypatch):
    client = await app_client()
    app = client.server.app
    app[SERVICES].projector.retry_seconds = 0.05
    real_record = app[SERVICES].recorder.record

    async def down(changes, before_commit=None):
        raise DatabaseUnavailable("database is down")

    monkeypatch.setattr(app[SERVICES].recorder, "record", down)
    answer = await (await client.post(WEBHOOK, data=SAMPLE)).json()
    assert answer["projected"] is False
    scraped = await wait_for(client, lambda s: s("tlink_projection_database_available") == 0)
    assert scraped("tlink_projection_devices_behind") == 1
    assert scraped("tlink_projection_database_available") == 0
    assert scraped("tlink_projection_applied_events_total") == 0
    monkeypatch.setattr(app[SERVICES].recorder, "record", real_record)
    scraped = await wait_for(client, lambda s: s("tlink_projection_devices_behind") == 0)
    assert scraped("tlink_projection_devices_behind") == 0
    assert scraped("tlink_projection_applied_events_total") == 1
    assert scraped("tlink_projection_database_available") == 1


async def test_applied_events_and_last_applied_time_follow_pushes(app_client):
    client = await app_client()
    started = datetime.now(UTC).timestamp()
    await client.post(WEBHOOK, data=SAMPLE)
    scraped = await scrape(client)
    assert scraped("tlink_projection_applied_events_total") == 1
    assert scraped("tlink_projection_queued_events") == 0
    applied_at = scraped("tlink_projection_last_applied_timestamp_seconds")
    assert started - 1 <= applied_at <= datetime.now(UTC).timestamp() + 1


async def test_a_device_whose_event_cannot_be_applied_is_counted_and_flagged(app_client, monkeypatch):
    client = await app_client()
    app = client.server.app

    async def broken(changes, before_commit=None):
        raise RuntimeError("bad data")

    monkeypatch.setattr(app[SERVICES].recorder, "record", broken)
    await client.post(WEBHOOK, data=SAMPLE)
    scraped = await wait_for(client, lambda s: s("tlink_projection_stopped_devices") == 1)
    assert scraped("tlink_projection_failures_total") == 1
    assert scraped("tlink_projection_failed") == 0  # the projector itself goes on with other devices


async def test_a_finished_sync_run_is_counted_timed_and_sized(app_client):
    client = await app_client()
    stats = client.server.app[SYNC_STATS]
    report = SyncReport(started_at=datetime.now(UTC), seconds=0.75)
    report.users.append(UserReport(385, pages=2, devices=12, unchanged=7, readings=30))
    report.users.append(UserReport(386, pages=1, devices=0, readings=0, failures=1))
    stats.note_token("password")
    stats.note_token("refresh_token")
    stats.note_run(report)
    stats.skipped_runs += 1
    scraped = await scrape(client)
    assert scraped("tlink_sync_runs_total", outcome="partial") == 1
    assert scraped("tlink_sync_runs_total", outcome="ok") == 0
    assert scraped("tlink_sync_runs_skipped_total") == 1
    assert scraped("tlink_sync_failures_total") == 1
    assert scraped("tlink_sync_devices_unchanged_total") == 7
    assert scraped("tlink_sync_token_refreshes_total") == 2
    assert scraped("tlink_sync_duration_seconds_count") == 1
    assert scraped("tlink_sync_duration_seconds_sum") == 0.75
    assert scraped("tlink_sync_run_devices_sum") == 12
    assert scraped("tlink_sync_run_devices_bucket", le="10.0") == 0
    assert scraped("tlink_sync_run_devices_bucket", le="25.0") == 1
    assert scraped("tlink_sync_run_readings_sum") == 30
    assert abs(scraped("tlink_sync_last_run_timestamp_seconds") - datetime.now(UTC).timestamp()) < 5


async def test_retention_passes_and_deleted_files_are_counted(app_client):
    client = await app_client()
    stats = client.server.app[RETENTION_STATS]
    for _ in range(250):  # the pass every start-up runs
        if stats.runs + stats.failed_runs:
            break
        await asyncio.sleep(0.02)
    stats.runs += 1
    stats.failed_runs += 1
    stats.files_deleted += 4
    stats.files_kept += 1
    stats.last_finished_at = datetime.now(UTC)
    scraped = await scrape(client)
    assert scraped("tlink_retention_runs_total", outcome="ok") == stats.runs >= 1
    assert scraped("tlink_retention_runs_total", outcome="failed") == stats.failed_runs >= 1
    assert scraped("tlink_retention_files_deleted_total") == stats.files_deleted >= 4
    assert scraped("tlink_retention_files_kept_total") == stats.files_kept >= 1
    assert scraped("tlink_retention_last_run_timestamp_seconds") == stats.last_finished_at.timestamp()


async def test_each_app_has_its_own_registry(aiohttp_client, make_settings):
    first = await aiohttp_client(create_app(make_settings()))
    second = await aiohttp_client(create_app(make_settings(SYNC_LOG_DIR=make_settings().SYNC_LOG_DIR / "other")))
    await first.post(WEBHOOK, data=SAMPLE)
    assert outcome(await scrape(first), "ok") == 1
    assert outcome(await scrape(second), "ok") == 0


async def test_promtool_finds_nothing_to_complain_about(app_client, promtool):
    client = await app_client()
    await client.post(WEBHOOK, data=SAMPLE)
    await client.post(WEBHOOK, data=b"{bad")
    await client.get(LATEST)
    await client.get("/nowhere")
    text = (await scrape(client)).text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
