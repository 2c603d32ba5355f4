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
- ``GET /_control``: the switches and request counts.
- ``POST /_control``: set switches from a JSON object, for example
  ``curl -X POST localhost:8090/_control -d '{"delay_seconds": 5, "fail_with_500": 2}'``.

Switches (see ``SWITCHES``): ``expires_in`` (lifetime of new tokens, seconds),
``fail_next_api_with_401`` (count), ``fail_with_500`` (count), ``fail_refresh_grant``
(count of refresh_token grants refused), ``flag01`` (answer every API call with the
flag "01" fixture), ``delay_seconds`` (sleep before answering an API call).

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from service.jobs.tlink_client import MAX_PAGE_SIZE, parse_json

FIXTURE_USER_ID = 385
TOKEN_PATH = "/oauth/token"
SENSOR_DATA_PATH = "/api/device/getDeviceSensorDatas"
CONTROL_PATH = "/_control"
DEFAULT_FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# Switch name -> accepted JSON type; the only fields POST /_control may change.
SWITCHES: dict[str, type] = {
    "expires_in": int,
    "fail_next_api_with_401": int,
    "fail_with_500": int,
    "fail_refresh_grant": int,
    "flag01": bool,
    "delay_seconds": float,
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


async def device_sensor_datas(request: web.Request) -> web.Response:
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
    return json_response(sensor_datas_answer(request.app[FIXTURES_DIR], state, body))


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
