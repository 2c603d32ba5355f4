"""GET /dashboard and GET /api/docs in a real browser (Debian's chromium driven by Playwright), on both backends.

The app runs on a real TCP port; the page talks to it exactly as a user's browser would.
Nothing is downloaded: the pages' libraries are vendored in the package, and chromium is
the system's (ops/test installs it when it is missing).
"""

from __future__ import annotations

import asyncio
import copy
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from service.http.keys import SERVICES
from service.http.routes import OPERATIONS
from tests.conftest import fixture_bytes

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))
USER = 385
NORTH, SOUTH = 2864, 2865
LEVEL, TEMPERATURE, WATER = 11922, 11923, 11924
WEBHOOK = "/api/webhooks/tlink"
KEY = "dashboard-test-key"
WAIT_MS = 2000  # how soon a push must show on the page
LOAD_MS = 15_000  # the most a page load, a click or anything else may take (the machine may be busy)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed (./ops/test installs Debian's chromium when it is missing)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        expect.set_options(timeout=LOAD_MS)
        yield browser
        await browser.close()


async def open_page(browser: Browser, **options: Any) -> tuple[Page, list[str]]:
    """A new page, and the list its uncaught script errors go to."""
    page = await browser.new_page(**options)
    page.set_default_timeout(LOAD_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


def platform_time(ago: timedelta) -> str:
    """A reading time that long ago (the app's platform clock is UTC: TLINK_TIMEZONE is unset)."""
    return (datetime.now(UTC) - ago).strftime("%Y-%m-%d %H:%M:%S")


def push_body(time: str, values: dict[int, str], device_id: int = NORTH, alarm: frozenset[int] = frozenset()) -> dict:
    body = copy.deepcopy(SAMPLE)
    body.update(deviceId=device_id, deviceUserid=USER, time=time)
    body["sensorsDates"] = [
        {"times": time[11:], "sensorsId": s, "isAlarm": "1" if s in alarm else "0", "sensorsTypeId": 1, "isLine": 1,
         "reVal": v, "value": v}
        for s, v in values.items()
    ]  # fmt: skip
    return body


async def push(client: Any, body: dict) -> None:
    resp = await client.post(WEBHOOK, data=orjson.dumps(body))
    assert resp.status == 200, await resp.text()


async def sync_device(client: Any, device_id: int, name: str, sensors: dict[int, tuple[str, str]]) -> None:
    """What a TLINK sync says of a device: its name and its sensors' names and units (no readings)."""
    device = {
        "id": device_id, "deviceName": name, "deviceNo": f"NO{device_id}", "userId": USER, "groupId": 7, "isLine": 1,
        "sensorsList": [
            {"id": s, "deviceId": device_id, "sensorName": sensor_name, "sensorTypeId": 1, "unit": unit,
             "value": None, "isAlarms": 0, "isLine": 1, "ordernum": i, "updateDate": None}
            for i, (s, (sensor_name, unit)) in enumerate(sensors.items())
        ],
    }  # fmt: skip
    await client.server.app[SERVICES].ingestor.sync_device(USER, device)


async def two_tanks(client: Any) -> None:
    """Two synced devices; the north tank has 12 readings in the last hour, its water sensor in alarm at the end."""
    await sync_device(client, NORTH, "North tank", {LEVEL: ("Fuel level", "L"), TEMPERATURE: ("Temperature", "°C"),
                                                    WATER: ("Water", "mm")})  # fmt: skip
    await sync_device(client, SOUTH, "South tank", {20001: ("Fuel level", "L")})
    for n in range(12):
        values = {LEVEL: f"{500 - n * 5}", TEMPERATURE: f"{20 + n / 10:.1f}", WATER: f"{n}"}
        alarm = frozenset({WATER}) if n == 11 else frozenset()
        await push(client, push_body(platform_time(timedelta(minutes=60 - n * 5)), values, alarm=alarm))
    await push(client, push_body(platform_time(timedelta(minutes=3)), {20001: "812"}, device_id=SOUTH))


async def show_user(page: Page, client: Any, user: int = USER, key: str | None = None) -> None:
    """Open the dashboard, type the user id (and the API key when the page asks), wait for its devices."""
    await page.goto(str(client.make_url("/dashboard")))
    await page.fill("#user-id", str(user))
    await page.click("#user-form button")
    if key is not None:
        await expect(page.locator("#key-form")).to_be_visible()
        await page.fill("#api-key", key)
        await page.click("#key-form button")
    loaded = re.compile(rf"^User {user}: \d+ devices?\.$")
    await expect(page.locator("#status")).to_have_text(
        loaded,
    )  # the devices and their histories


def sensor(page: Page, device_id: int, sensor_id: int) -> Any:
    return page.locator(f'.device[data-device-id="{device_id}"] .sensor[data-sensor-id="{sensor_id}"]')


async def push_live(page: Page, client: Any, body: dict) -> None:
    """Push while the page is live: the stream open, or, while it polls /latest every 2 s, a second before a poll.

    A push answered just after a poll read /latest shows at the next one, 2 s later: the
    test would then measure the polling period, not whether the page shows what it polls.
    Half a period before a poll leaves a second for the push and the poll to be answered.
    """
    live = page.locator("#live")
    await expect(live).to_have_attribute("data-mode", re.compile("^(stream|polling)$"))
    if await live.get_attribute("data-mode") == "polling":
        await expect(live).to_have_attribute("data-next-poll", re.compile("."))
        remaining, period = await page.evaluate(
            "() => { const live = document.getElementById('live');"
            " return [Number(live.dataset.nextPoll) - performance.now(), Number(live.dataset.pollMs)]; }"
        )
        assert period == 2000
        if remaining < period / 2:
            remaining += period  # that poll is too close: the one after it
        await asyncio.sleep((remaining - period / 2) / 1000)
    await push(client, body)


async def history_count(client: Any, device_id: int, start: str, sensor_id: int, headers: Any = None) -> int:
    url = f"/api/users/{USER}/devices/{device_id}/history"
    resp = await client.get(url, params={"startTime": start, "historyLimit": "1000"}, headers=headers)
    assert resp.status == 200
    return len(next(s for s in (await resp.json())["sensors"] if s["sensorId"] == sensor_id)["history"])


async def test_the_page_lists_devices_with_their_names_latest_values_and_state(app_client, browser, tmp_path):
    client = await app_client()
    await two_tanks(client)
    page, errors = await open_page(browser, viewport={"width": 1280, "height": 900})
    await show_user(page, client)
    names = page.locator(".device .device-name")
    await expect(names).to_have_text(["North tank", "South tank"])
    level = sensor(page, NORTH, LEVEL)
    await expect(level.locator(".sensor-name")).to_have_text("Fuel level")
    await expect(level.locator(".value")).to_have_text("445 L")
    await expect(sensor(page, NORTH, TEMPERATURE).locator(".value")).to_have_text("21.1 °C")
    await expect(level.locator(".age")).to_have_text(re.compile(r"^\d+ min ago$"))
    await expect(level.locator(".badge.online")).to_have_text("online")
    water = sensor(page, NORTH, WATER)
    await expect(water.locator(".badge.alarm")).to_have_text("alarm")
    await expect(page.locator(f'.device[data-device-id="{NORTH}"] .device-head .badge.alarm')).to_have_text("alarm (1)")
    await expect(page.locator(f'.device[data-device-id="{SOUTH}"] .device-head .badge.alarm')).to_have_count(0)
    await expect(page.locator(f'.device[data-device-id="{SOUTH}"] .device-meta')).to_contain_text(f"no. NO{SOUTH}")
    await expect(page.locator(".sensor canvas")).to_have_count(4)  # a chart for every sensor
    await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 0
    assert errors == []


async def test_a_chart_has_as_many_points_as_history_answered_in_each_window(app_client, browser):
    client = await app_client()
    await two_tanks(client)
    await push(client, push_body(platform_time(timedelta(days=3)), {LEVEL: "900"}))  # only in the 7 d window
    page, errors = await open_page(browser)
    await show_user(page, client)
    device = page.locator(f'.device[data-device-id="{NORTH}"]')
    for window, expected in (("6h", 12), ("7d", 13), ("24h", 12)):
        if window != "6h":
            button = page.locator(f'#windows button[data-window="{window}"]')
            await button.click()
            await expect(button).to_have_attribute("aria-pressed", "true")
        await expect(sensor(page, NORTH, LEVEL).locator(".chart")).to_have_attribute("data-points", str(expected))
        start = await device.get_attribute("data-start-time")
        assert start is not None
        for sensor_id in (LEVEL, TEMPERATURE, WATER):
            answered = await history_count(client, NORTH, start, sensor_id)
            chart = sensor(page, NORTH, sensor_id).locator(".chart")
            await expect(chart).to_have_attribute("data-points", str(answered))
    assert page.url.endswith("window=24h")
    assert errors == []


async def test_a_push_appears_on_the_page_within_two_seconds(app_client, browser):
    client = await app_client()
    await two_tanks(client)
    page, errors = await open_page(browser)
    await show_user(page, client)
    level = sensor(page, NORTH, LEVEL)
    await expect(level.locator(".chart")).to_have_attribute("data-points", "12")
    await push_live(
        page, client, push_body(platform_time(timedelta(seconds=1)), {LEVEL: "123.4"}, alarm=frozenset({LEVEL}))
    )
    await expect(level.locator(".value")).to_have_text("123.4 L", timeout=WAIT_MS)
    await expect(level.locator(".chart")).to_have_attribute("data-points", "13")
    await expect(level.locator(".badge.alarm")).to_have_text("alarm")
    await expect(level.locator(".age")).to_have_text(re.compile(r"^\d+ s ago$"))
    await push_live(page, client, push_body(platform_time(timedelta(seconds=0)), {20001: "799"}, device_id=SOUTH))
    await expect(sensor(page, SOUTH, 20001).locator(".value")).to_have_text("799 L", timeout=WAIT_MS)
    assert errors == []


async def test_the_page_resumes_the_stream_after_a_disconnect_and_loses_nothing(app_client, browser):
    """A stream that falls behind is closed by the service (STREAM_QUEUE_EVENTS=1): the browser reconnects
    with Last-Event-ID and gets what it missed from the log, so the chart ends with every reading."""
    client = await app_client(STREAM_QUEUE_EVENTS=1)
    await two_tanks(client)
    page, errors = await open_page(browser)
    await show_user(page, client)
    level, live = sensor(page, NORTH, LEVEL), page.locator("#live")
    await expect(live).to_have_attribute("data-mode", "stream", timeout=LOAD_MS)
    bodies = [push_body(platform_time(timedelta(seconds=40 - n)), {LEVEL: f"{300 + n}"}) for n in range(20)]
    await asyncio.gather(*(push(client, body) for body in bodies))  # one batch: more than the queue holds
    start = platform_time(timedelta(hours=6))
    answered = await history_count(client, NORTH, start, LEVEL)
    assert answered == 32
    await expect(level.locator(".chart")).to_have_attribute("data-points", str(answered), timeout=LOAD_MS)
    await expect(level.locator(".value")).to_have_text("319 L", timeout=LOAD_MS)
    await expect(live).to_have_attribute("data-mode", "stream", timeout=LOAD_MS)
    metrics = await (await client.get("/metrics")).text()
    assert "tlink_stream_clients_dropped_total 0.0" not in metrics  # the service did drop it once
    assert errors == []


async def test_with_api_keys_the_key_is_typed_once_and_kept_for_the_tab(app_client, browser):
    client = await app_client(API_KEYS=[KEY])
    await two_tanks(client)
    page, errors = await open_page(browser)
    await page.goto(str(client.make_url("/dashboard")))
    await page.fill("#user-id", str(USER))
    await page.click("#user-form button")
    await expect(page.locator("#key-form")).to_be_visible()
    await page.fill("#api-key", "wrong")
    await page.click("#key-form button")
    await expect(page.locator("#status")).to_have_text("That API key was refused: type another one.")
    await page.fill("#api-key", KEY)
    await page.click("#key-form button")
    await expect(page.locator(".device .device-name")).to_have_text(["North tank", "South tank"])
    assert await page.evaluate("sessionStorage.getItem('tlink.apiKey')") == KEY
    north = page.locator(f'.device[data-device-id="{NORTH}"]')
    await expect(north).to_have_attribute("data-start-time", re.compile("."))  # its history is in
    start = await north.get_attribute("data-start-time")
    answered = await history_count(client, NORTH, start or "", LEVEL, headers={"Authorization": f"Bearer {KEY}"})
    await expect(sensor(page, NORTH, LEVEL).locator(".chart")).to_have_attribute("data-points", str(answered))
    await push_live(page, client, push_body(platform_time(timedelta(seconds=1)), {LEVEL: "321"}))
    await expect(sensor(page, NORTH, LEVEL).locator(".value")).to_have_text("321 L", timeout=WAIT_MS)
    await page.reload()  # the user is in the address, the key in the tab's sessionStorage
    await expect(page.locator(".device .device-name")).to_have_text(["North tank", "South tank"])
    await expect(page.locator("#key-form")).to_be_hidden()
    await page.click("#forget-key")
    assert await page.evaluate("sessionStorage.getItem('tlink.apiKey')") is None
    assert errors == []


async def test_a_phone_width_screen_has_no_horizontal_overflow(app_client, browser, tmp_path):
    client = await app_client()
    await two_tanks(client)
    page, errors = await open_page(browser, viewport={"width": 360, "height": 740}, device_scale_factor=2,
                                   is_mobile=True, has_touch=True)  # fmt: skip
    await show_user(page, client)
    await expect(page.locator(".sensor canvas")).to_have_count(4)
    await page.screenshot(path=tmp_path / "dashboard-phone.png", full_page=True)
    widths = await page.evaluate(
        "() => ({page: document.documentElement.scrollWidth, body: document.body.scrollWidth,"
        " view: document.documentElement.clientWidth,"
        " widest: Math.max(...[...document.querySelectorAll('body *')].map(e => e.getBoundingClientRect().right))})"
    )
    assert widths["view"] == 360
    assert widths["page"] <= widths["view"] and widths["body"] <= widths["view"], widths
    assert widths["widest"] <= widths["view"], widths
    assert errors == []


@pytest.mark.parametrize("keys", [[], [KEY]], ids=["open", "api-keys"])
async def test_the_api_reference_renders_every_operation(app_client, browser, keys):
    client = await app_client(API_KEYS=keys)
    await two_tanks(client)
    page, errors = await open_page(browser)
    await page.goto(str(client.make_url("/api/docs")))
    if keys:
        await expect(page.locator("#key-form")).to_be_visible()
        await page.fill("#api-key", KEY)
        await page.click("#key-form button")
    await expect(page.locator(".opblock")).to_have_count(len(OPERATIONS))
    for op in OPERATIONS:
        block = page.locator(f".opblock-{op.method}", has=page.locator(f'[data-path="{op.path}"]'))
        await expect(block).to_have_count(1)
    # "Try it out" goes through the same key.
    devices = page.locator(".opblock-get", has=page.locator('[data-path="/api/users/{userId}/devices"]'))
    await devices.locator(".opblock-summary").click()
    await devices.locator(".try-out__btn").click()
    await devices.locator('input[placeholder="userId"]').fill(str(USER))
    await devices.locator(".execute").click()
    await expect(devices.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
    assert errors == []


async def test_the_platform_clock_makes_now_windows_and_ages(app_client, browser):
    client = await app_client(TLINK_TIMEZONE="Asia/Shanghai")  # UTC+8, no summer time
    await sync_device(client, NORTH, "North tank", {LEVEL: ("Fuel level", "L")})
    shanghai = datetime.now(UTC) + timedelta(hours=8)
    for minutes in (400, 300, 10):  # platform time: the first is outside the 6 h window
        at = (shanghai - timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")
        await push(client, push_body(at, {LEVEL: str(minutes)}))
    page, errors = await open_page(browser)
    await show_user(page, client)
    level = sensor(page, NORTH, LEVEL)
    await expect(level.locator(".age")).to_have_text(re.compile(r"^(9|10|11) min ago$"))
    await expect(level.locator(".chart")).to_have_attribute("data-points", "2")
    assert errors == []


async def test_the_pages_and_their_files_are_served_as_the_document_says(app_client):
    client = await app_client(TLINK_TIMEZONE="+05:30", MAX_HISTORY_LIMIT=300, API_KEYS=[KEY])
    resp = await client.get("/dashboard")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert 'data-timezone="+05:30" data-offset-minutes="330" data-history-limit="300"' in page
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    resp = await client.get("/api/docs")  # no key needed for the page itself
    assert resp.status == 200 and resp.content_type == "text/html"
    for name, kind in (("dashboard.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        resp = await client.get(f"/static/{name}")
        assert resp.status == 200 and resp.content_type == kind, name
        again = await client.get(f"/static/{name}", headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status == 304
    for name in ("VENDORED.md", "dashboard.html", "..%2Fdashboard.py", "vendor%2Fuplot%2FLICENSE"):
        resp = await client.get(f"/static/{name}")
        assert resp.status == 404 and (await resp.json()) == {"error": "no such file"}, name
