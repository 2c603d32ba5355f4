"""A fake TLINK REST server for tests and manual runs (tlink-protocol.md section 2).

Command line::

    python -m ops.fake_tlink [--host 127.0.0.1] [--port 8090] [--fixtures DIR]
        [--client-id example-client] [--client-secret example-secret]
        [--username demo] [--password demo] [--expires-in 3600]

``--fixtures`` defaults to ``tests/fixtures`` of this project and must hold
``oauth_token.json``, ``sync_page<N>.json`` and ``sync_error_flag01.json``.

Routes:

- ``POST /oauth/token``: password and refresh_token grants, client credentials in
  HTTP Basic auth. Every grant issues a new random access and refresh token, and only
  the latest ones are accepted afterwards.
- ``GET`` and ``POST /api/device/getDeviceSensorDatas``: reads ``userId``,
  ``currPage`` and ``pageSize`` from the JSON body (even on GET, like the vendor).
  User 385 gets ``sync_page<currPage>.json`` as stored (whatever the pageSize), any
  other user an empty ``dataList`` with ``pages`` 0; ``pageSize`` over 100 gets
  flag "01"; a missing, unknown or expired bearer token gets 401.
- ``GET`` and ``POST /api/device/getSensorHistroy`` (§2.4): one sensor's generated history
  (see ``POST /_history``) in the ``startDate``..``endDate`` window, newest first,
  ``pageSize`` (at most 100) readings a page, ``nextPage`` a cursor to pass back as
  ``pagingState`` (``""`` on the last page). Past ``history_quota`` calls for a sensor in a
  UTC day (50, as the vendor) every call is answered flag "01".
- ``POST /_history``: generate a sensor's history, for example
  ``{"sensorId": 11, "start": "2026-05-01 08:00:00", "end": "2026-05-01 12:00:00", "everySeconds": 60}``
  (one reading every ``everySeconds``, value ``base`` + minutes, ``base`` default 100).
- ``POST /_push``: push a generated history to a webhook as the platform would, one push
  per reading, leaving out ``dropFrom``..``dropTo`` (to make a gap), for example
  ``{"webhook": "http://127.0.0.1:5000/api/webhooks/tlink", "deviceId": 2864, "userId": 385,
  "sensorId": 11, "dropFrom": "2026-05-01 09:00:00", "dropTo": "2026-05-01 09:59:59"}``.
- ``GET /_control``: the switches and request counts.
- ``POST /_control``: set switches from a JSON object, for example
  ``curl -X POST localhost:8090/_control -d '{"delay_seconds": 5, "fail_with_500": 2}'``.

Switches (see ``SWITCHES``): ``expires_in`` (lifetime of new tokens, seconds),
``fail_next_api_with_401`` (count), ``fail_with_500`` (count), ``fail_refresh_grant``
(count of refresh_token grants refused), ``flag01`` (answer every API call with the
flag "01" fixture), ``delay_seconds`` (sleep before answering an API call), ``history_quota``
(history calls per sensor per UTC day before flag "01").

Tests build the app with ``make_fake_tlink_app(fixtures_dir)`` and reach the state
through ``app[FAKE_TLINK_STATE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from service.jobs.tlink_client import MAX_PAGE_SIZE, parse_json

FIXTURE_USER_ID = 385
TOKEN_PATH = "/oauth/token"
SENSOR_DATA_PATH = "/api/device/getDeviceSensorDatas"
HISTORY_PATH = "/api/device/getSensorHistroy"
CONTROL_PATH = "/_control"
HISTORY_CONTROL_PATH = "/_history"
PUSH_CONTROL_PATH = "/_push"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
VENDOR_QUOTA = 50
DEFAULT_FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# Switch name -> accepted JSON type; the only fields POST /_control may change.
SWITCHES: dict[str, type] = {
    "expires_in": int,
    "fail_next_api_with_401": int,
    "fail_with_500": int,
    "fail_refresh_grant": int,
    "flag01": bool,
    "delay_seconds": float,
    "history_quota": int,
}


@dataclass(frozen=True)
class ApiCall:
    """One API request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON body, or None when there was none
    bearer: str | None


@dataclass
class FakeTlinkState:
    """Credentials, runtime switches and what the fake has seen."""

    client_id: str = "example-client"
    client_secret: str = "example-secret"
    username: str = "demo"
    password: str = "demo"
    clock: Callable[[], float] = time.monotonic
    # Switches.
    expires_in: int = 3600
    fail_next_api_with_401: int = 0
    fail_with_500: int = 0
    fail_refresh_grant: int = 0
    flag01: bool = False
    delay_seconds: float = 0.0
    history_quota: int = VENDOR_QUOTA
    # Each sensor's stored history: reading time -> value.
    histories: dict[int, dict[datetime, str]] = field(default_factory=dict)
    history_calls: Counter[tuple[int, str]] = field(default_factory=Counter)  # (sensor, UTC day) -> calls
    # Issued tokens: only the latest pair is good.
    access_token: str | None = None
    refresh_token: str | None = None
    access_expires_at: float = 0.0
    # Records.
    requests: Counter[str] = field(default_factory=Counter)  # "METHOD /path" -> count
    grants: list[str] = field(default_factory=list)  # grant_type of every successful grant
    issued_tokens: list[str] = field(default_factory=list)  # access tokens, in order
    api_calls: list[ApiCall] = field(default_factory=list)

    @property
    def tokens_seen(self) -> list[str | None]:
        """The bearer token of every API call, in order (None when missing)."""
        return [call.bearer for call in self.api_calls]

    def count(self, path: str) -> int:
        """Requests to ``path`` over all methods."""
        return sum(n for key, n in self.requests.items() if key.split(" ", 1)[1] == path)

    def switches(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SWITCHES}

    def issue_token(self) -> tuple[str, str]:
        self.access_token, self.refresh_token = str(uuid.uuid4()), str(uuid.uuid4())
        self.access_expires_at = self.clock() + self.expires_in
        self.issued_tokens.append(self.access_token)
        return self.access_token, self.refresh_token

    def accepts(self, bearer: str | None) -> bool:
        return bearer is not None and bearer == self.access_token and self.clock() < self.access_expires_at

    def generate_history(self, sensor_id: int, start: datetime, end: datetime, every: int, base: float = 100.0) -> int:
        """Readings every `every` seconds from `start` to `end` (inclusive): value `base` + minutes since start."""
        readings = self.histories.setdefault(sensor_id, {})
        moment, made = start, 0
        while moment <= end:
            readings[moment] = f"{base + (moment - start).total_seconds() / 60:.4f}"
            moment += timedelta(seconds=every)
            made += 1
        return made

    def history_page(self, body: dict[str, Any]) -> dict[str, Any]:
        """The answer of one getSensorHistroy call (its quota counted)."""
        sensor_id, size = body.get("sensorId"), body.get("pageSize", 100)
        if not isinstance(sensor_id, int) or not isinstance(size, int) or not 0 < size <= MAX_PAGE_SIZE:
            return {"flag": "01", "msg": "sensorId and a pageSize of 1 to 100 are required"}
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        self.history_calls[(sensor_id, day)] += 1
        if self.history_calls[(sensor_id, day)] > self.history_quota:
            return {"flag": "01", "msg": f"sensor {sensor_id} has used its {self.history_quota} history calls today"}
        try:
            start = datetime.strptime(str(body.get("startDate")), TIME_FORMAT)
            end = datetime.strptime(str(body.get("endDate")), TIME_FORMAT)
            offset = int(str(body.get("pagingState") or "0x0"), 16)
        except ValueError:
            return {"flag": "01", "msg": "startDate, endDate must be YYYY-MM-DD HH:MM:SS, pagingState a cursor"}
        found = sorted((m for m in self.histories.get(sensor_id, {}) if start <= m <= end), reverse=True)
        page = found[offset : offset + size]
        more = offset + size < len(found)
        return {
            "flag": "00", "msg": "", "sensorId": sensor_id, "sensorName": f"Sensor {sensor_id}", "unit": "mm",
            "sensorTypeId": 1, "deviceName": "Tank", "nextPage": f"0x{offset + size:08x}" if more else "",
            "dataList": [
                {"addTime": m.strftime(TIME_FORMAT), "val": self.histories[sensor_id][m], "lat": "", "lng": "",
                 "switcher": ""}
                for m in page
            ],
        }  # fmt: skip

    def take(self, counter: str) -> bool:
        """Use up one unit of a count switch; True when one was left."""
        left = getattr(self, counter)
        if left <= 0:
            return False
        setattr(self, counter, left - 1)
        return True


FAKE_TLINK_STATE: web.AppKey[FakeTlinkState] = web.AppKey("fake_tlink_state", FakeTlinkState)
FIXTURES_DIR: web.AppKey[Path] = web.AppKey("fake_tlink_fixtures", Path)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- answers


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def spring_error(request: web.Request, status: int, error: str, message: str) -> web.Response:
    """The Spring Boot error shape the vendor uses for 4xx/5xx."""
    body = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "status": status,
        "error": error,
        "message": message,
        "path": request.path,
    }
    return json_response(body, status)


def oauth_error(status: int, error: str, description: str) -> web.Response:
    return json_response({"error": error, "error_description": description}, status)


def load_fixture(fixtures_dir: Path, name: str) -> Any:
    return orjson.loads((fixtures_dir / name).read_bytes())


# --------------------------------------------------------------------------- token route


async def token(request: web.Request) -> web.Response:
    state = request.app[FAKE_TLINK_STATE]
    if not client_is_known(request, state):
        return oauth_error(401, "unauthorized", "Bad client credentials")
    # The vendor reads the fields from the form or the query string.
    fields = {**request.query, **(await request.post())}
    grant = str(fields.get("grant_type", ""))
    refusal = check_grant(state, grant, fields)
    if refusal is not None:
        return refusal
    state.grants.append(grant)
    access_token, refresh_token = state.issue_token()
    answer = load_fixture(request.app[FIXTURES_DIR], "oauth_token.json")
    answer.update(access_token=access_token, refresh_token=refresh_token, expires_in=state.expires_in)
    if fields.get("scope"):
        answer["scope"] = str(fields["scope"])
    return json_response(answer)


def client_is_known(request: web.Request, state: FakeTlinkState) -> bool:
    return basic_credentials(request) == (state.client_id, state.client_secret)


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """The (login, password) of an HTTP Basic Authorization header, or None."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        login, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (login, password) if sep else None


def check_grant(state: FakeTlinkState, grant: str, fields: dict[str, Any]) -> web.Response | None:
    """None when the grant is good, else the OAuth error answer."""
    if grant == "password":
        if (fields.get("username"), fields.get("password")) != (state.username, state.password):
            return oauth_error(400, "invalid_grant", "Bad credentials")
        return None
    if grant == "refresh_token":
        if state.take("fail_refresh_grant") or fields.get("refresh_token") != state.refresh_token:
            return oauth_error(400, "invalid_grant", "Invalid refresh token")
        return None
    return oauth_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant}")


# --------------------------------------------------------------------------- API route


async def api_call(request: web.Request) -> dict[str, Any] | web.Response:
    """What every API route does first: record the call, the switches (delay, 500, 401), a JSON body.

    The body of a call to answer, or the error answer it gets.
    """
    state = request.app[FAKE_TLINK_STATE]
    body = await read_json_body(request)
    bearer = bearer_token(request)
    state.api_calls.append(ApiCall(request.method, request.path, dict(request.headers), body, bearer))
    if state.delay_seconds > 0:
        await asyncio.sleep(state.delay_seconds)
    if state.take("fail_with_500"):
        return spring_error(request, 500, "Internal Server Error", "fake TLINK failure (fail_with_500)")
    if state.take("fail_next_api_with_401") or not state.accepts(bearer):
        return spring_error(request, 401, "Unauthorized", "Full authentication is required")
    if not isinstance(body, dict):
        return spring_error(request, 400, "Bad Request", "Required request body is missing")
    return body


async def device_sensor_datas(request: web.Request) -> web.Response:
    body = await api_call(request)
    if isinstance(body, web.Response):
        return body
    return json_response(sensor_datas_answer(request.app[FIXTURES_DIR], request.app[FAKE_TLINK_STATE], body))


async def sensor_history(request: web.Request) -> web.Response:
    body = await api_call(request)
    if isinstance(body, web.Response):
        return body
    state = request.app[FAKE_TLINK_STATE]
    if state.flag01:
        return json_response(load_fixture(request.app[FIXTURES_DIR], "sync_error_flag01.json"))
    return json_response(state.history_page(body))


def sensor_datas_answer(fixtures_dir: Path, state: FakeTlinkState, body: dict[str, Any]) -> Any:
    page_size = body.get("pageSize", 10)
    if state.flag01 or not isinstance(page_size, int) or page_size > MAX_PAGE_SIZE:
        return load_fixture(fixtures_dir, "sync_error_flag01.json")
    user_id, page = body.get("userId"), body.get("currPage")
    if not isinstance(user_id, int) or not isinstance(page, int):
        return {"flag": "01", "msg": "userId and currPage are required"}
    if user_id == FIXTURE_USER_ID and (fixtures_dir / f"sync_page{page}.json").is_file():
        return load_fixture(fixtures_dir, f"sync_page{page}.json")
    return empty_page(fixtures_dir, user_id, page, page_size)


def empty_page(fixtures_dir: Path, user_id: int, page: int, page_size: int) -> dict[str, Any]:
    """No devices on this page; past its last page the fixture user keeps its counts."""
    first = load_fixture(fixtures_dir, "sync_page1.json") if user_id == FIXTURE_USER_ID else {}
    return {"flag": "00", "msg": "", "currPage": page, "pages": first.get("pages", 0),
            "pageSize": page_size, "rowCount": first.get("rowCount", 0), "dataList": []}


async def read_json_body(request: web.Request) -> Any:
    return parse_json(await request.read())


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


# --------------------------------------------------------------------------- control


async def show_control(request: web.Request) -> web.Response:
    state = request.app[FAKE_TLINK_STATE]
    return json_response({"switches": state.switches(), "requests": dict(state.requests),
                          "grants": state.grants})


async def set_control(request: web.Request) -> web.Response:
    state = request.app[FAKE_TLINK_STATE]
    body = await read_json_body(request)
    if not isinstance(body, dict):
        return spring_error(request, 400, "Bad Request", "expected a JSON object of switches")
    problems = [problem for name, value in body.items() if (problem := switch_problem(name, value))]
    if problems:
        return spring_error(request, 400, "Bad Request", "; ".join(problems))
    for name, value in body.items():
        setattr(state, name, SWITCHES[name](value))
    return json_response({"switches": state.switches()})


async def set_history(request: web.Request) -> web.Response:
    state = request.app[FAKE_TLINK_STATE]
    body = await read_json_body(request)
    try:
        sensor_id, every = int(body["sensorId"]), int(body.get("everySeconds", 60))
        start = datetime.strptime(body["start"], TIME_FORMAT)
        end = datetime.strptime(body["end"], TIME_FORMAT)
        base = float(body.get("base", 100.0))
    except (KeyError, TypeError, ValueError) as exc:
        return spring_error(request, 400, "Bad Request", f"sensorId, start, end (YYYY-MM-DD HH:MM:SS) needed: {exc}")
    if every < 1:
        return spring_error(request, 400, "Bad Request", "everySeconds must be at least 1")
    made = state.generate_history(sensor_id, start, end, every, base)
    return json_response({"sensorId": sensor_id, "generated": made, "stored": len(state.histories[sensor_id])})


def push_body(device_id: int, user_id: int, sensor_id: int, moment: datetime, value: str) -> dict[str, Any]:
    """A push of one reading, as the platform sends it."""
    return {
        "flag": "00", "deviceUserid": user_id, "parentUserId": "", "deviceId": device_id,
        "time": moment.strftime(TIME_FORMAT),
        "sensorsDates": [{"sensorsId": sensor_id, "value": value, "reVal": value, "times": moment.strftime("%H:%M:%S"),
                          "isAlarm": "0", "isLine": 1, "sensorsTypeId": 1}],
    }  # fmt: skip


def pushes(state: FakeTlinkState, device_id: int, user_id: int, sensor_id: int,
           drop: tuple[datetime, datetime] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The pushes of a sensor's generated history, oldest first, those in `drop` left out."""
    history = state.histories.get(sensor_id, {})
    return [
        push_body(device_id, user_id, sensor_id, moment, history[moment])
        for moment in sorted(history)
        if drop is None or not drop[0] <= moment <= drop[1]
    ]


async def push_history(request: web.Request) -> web.Response:
    state = request.app[FAKE_TLINK_STATE]
    body = await read_json_body(request)
    try:
        webhook, device_id, user_id = str(body["webhook"]), int(body["deviceId"]), int(body["userId"])
        sensor_id = int(body["sensorId"])
        drop = None
        if body.get("dropFrom"):
            drop = (datetime.strptime(body["dropFrom"], TIME_FORMAT), datetime.strptime(body["dropTo"], TIME_FORMAT))
    except (KeyError, TypeError, ValueError) as exc:
        return spring_error(request, 400, "Bad Request", f"webhook, deviceId, userId, sensorId needed: {exc}")
    sent = refused = 0
    async with aiohttp.ClientSession() as session:
        for push in pushes(state, device_id, user_id, sensor_id, drop):
            async with session.post(webhook, json=push, ssl=False) as answer:
                sent += 1
                refused += answer.status != 200
    return json_response({"pushed": sent, "refused": refused})


def switch_problem(name: str, value: Any) -> str | None:
    expected = SWITCHES.get(name)
    if expected is None:
        return f"unknown switch {name!r}"
    return None if value_fits(expected, value) else f"{name} must be {expected.__name__}"


def value_fits(expected: type, value: Any) -> bool:
    # bool is an int subclass: refuse true/false for numbers, and numbers for flags.
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    allowed = (int, float) if expected is float else (int,)
    return isinstance(value, allowed) and value >= 0


# --------------------------------------------------------------------------- app


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[FAKE_TLINK_STATE].requests[f"{request.method} {request.path}"] += 1
    return await handler(request)


def make_fake_tlink_app(fixtures_dir: Path, *, state: FakeTlinkState | None = None) -> web.Application:
    """The fake TLINK app; ``state`` carries credentials, a clock and the initial switches."""
    app = web.Application(middlewares=[count_requests])
    app[FAKE_TLINK_STATE] = state if state is not None else FakeTlinkState()
    app[FIXTURES_DIR] = fixtures_dir
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_get(SENSOR_DATA_PATH, device_sensor_datas)
    app.router.add_post(SENSOR_DATA_PATH, device_sensor_datas)
    app.router.add_get(HISTORY_PATH, sensor_history)
    app.router.add_post(HISTORY_PATH, sensor_history)
    app.router.add_post(HISTORY_CONTROL_PATH, set_history)
    app.router.add_post(PUSH_CONTROL_PATH, push_history)
    app.router.add_get(CONTROL_PATH, show_control)
    app.router.add_post(CONTROL_PATH, set_control)
    return app


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ops.fake_tlink", description="Fake TLINK REST server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES_DIR, help="fixture directory")
    parser.add_argument("--client-id", default="example-client")
    parser.add_argument("--client-secret", default="example-secret")
    parser.add_argument("--username", default="demo")
    parser.add_argument("--password", default="demo")
    parser.add_argument("--expires-in", type=int, default=3600, help="token lifetime, seconds")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.fixtures / "oauth_token.json").is_file():
        raise SystemExit(f"fake_tlink: no oauth_token.json in {args.fixtures}")
    state = FakeTlinkState(client_id=args.client_id, client_secret=args.client_secret,
                           username=args.username, password=args.password, expires_in=args.expires_in)
    web.run_app(make_fake_tlink_app(args.fixtures, state=state), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
