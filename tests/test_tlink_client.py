"""TlinkClient against the fake TLINK server (ops.fake_tlink), over real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from ops.fake_tlink import (
    FAKE_TLINK_STATE,
    SENSOR_DATA_PATH,
    TOKEN_PATH,
    FakeTlinkState,
    make_fake_tlink_app,
)
from service.jobs.tlink_client import (
    TlinkApiError,
    TlinkAuthError,
    TlinkBusinessError,
    TlinkClient,
    TlinkClientConfig,
    TlinkConnectionError,
    TlinkError,
    TlinkTimeout,
)

# The module-wide mark keeps it runnable whether asyncio_mode is "auto" or "strict"
# (pytest-asyncio warns about the mark on sync tests, so every test here is async).
pytestmark = pytest.mark.asyncio

FIXTURES = Path(__file__).parent / "fixtures"
USER_ID = 385
CLIENT_SECRET = "example-secret"
PASSWORD = "s3cret-demo-password"
SECRETS = (CLIENT_SECRET, PASSWORD)

ServerFactory = Callable[..., Awaitable[TestServer]]


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass
class Harness:
    """One fake server, its state, and a way to build clients against it."""

    server: TestServer
    state: FakeTlinkState
    session: aiohttp.ClientSession
    clock: FakeClock
    grants_seen: list[str]

    def config(self, **changes: Any) -> TlinkClientConfig:
        base = TlinkClientConfig(
            base_url=str(self.server.make_url("")),
            app_id="app-42",
            client_id="example-client",
            client_secret=CLIENT_SECRET,
            username="demo",
            password=PASSWORD,
            timeout_seconds=2.0,
        )
        return dataclasses.replace(base, **changes)

    def client(self, **changes: Any) -> TlinkClient:
        return TlinkClient(
            self.session, self.config(**changes), clock=self.clock, on_token_refresh=self.grants_seen.append
        )

    def api_count(self) -> int:
        return self.state.count(SENSOR_DATA_PATH)

    def token_count(self) -> int:
        return self.state.count(TOKEN_PATH)


@pytest.fixture
def server_clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def harness(aiohttp_server: ServerFactory, server_clock: FakeClock) -> AsyncIterator[Harness]:
    state = FakeTlinkState(password=PASSWORD, clock=server_clock)
    server = await aiohttp_server(make_fake_tlink_app(FIXTURES, state=state))
    async with aiohttp.ClientSession() as session:
        yield Harness(server, state, session, FakeClock(), [])


def assert_no_secret(text: str, state: FakeTlinkState) -> None:
    for secret in (*SECRETS, *state.issued_tokens, state.refresh_token or "-"):
        assert secret not in text


async def collect(client: TlinkClient, user_id: int = USER_ID, page_size: int = 2) -> list[tuple[int, int]]:
    return [(page, device["id"]) async for page, device in client.iter_devices(user_id, page_size)]


# --------------------------------------------------------------------------- paging


async def test_iter_devices_walks_every_page(harness: Harness) -> None:
    devices = await collect(harness.client())

    assert devices == [(1, 3000), (1, 3001), (2, 3002), (2, 3003), (3, 3004)]
    assert [call.body["currPage"] for call in harness.state.api_calls] == [1, 2, 3]


async def test_iter_devices_of_unknown_user_yields_nothing(harness: Harness) -> None:
    assert await collect(harness.client(), user_id=999) == []
    assert harness.api_count() == 1


async def test_one_page_is_returned_whole(harness: Harness) -> None:
    answer = await harness.client().get_device_sensor_datas(USER_ID, 2, 2)

    assert answer["currPage"] == 2 and answer["pages"] == 3
    assert [device["id"] for device in answer["dataList"]] == [3002, 3003]


@pytest.mark.parametrize("page_size", [0, -1, 101])
async def test_page_size_out_of_range_is_refused_before_any_request(harness: Harness, page_size: int) -> None:
    client = harness.client()
    with pytest.raises(ValueError, match="page_size"):
        await client.get_device_sensor_datas(USER_ID, 1, page_size)
    with pytest.raises(ValueError, match="page_size"):
        await collect(client, page_size=page_size)
    assert harness.token_count() == 0 and harness.api_count() == 0


async def test_page_zero_is_refused(harness: Harness) -> None:
    with pytest.raises(ValueError, match="1-based"):
        await harness.client().get_device_sensor_datas(USER_ID, 0, 2)


# --------------------------------------------------------------------------- request shape


async def test_get_sends_parameters_as_json_body(harness: Harness) -> None:
    await harness.client().get_device_sensor_datas(USER_ID, 1, 2)

    call = harness.state.api_calls[0]
    assert call.method == "GET"
    assert call.body == {"userId": USER_ID, "currPage": 1, "pageSize": 2}
    assert call.headers["Content-Type"] == "application/json"


async def test_post_method_is_configurable(harness: Harness) -> None:
    devices = await collect(harness.client(http_method="post"))

    assert len(devices) == 5
    assert {call.method for call in harness.state.api_calls} == {"POST"}
    assert harness.state.api_calls[0].body == {"userId": USER_ID, "currPage": 1, "pageSize": 2}


async def test_every_call_carries_app_id_and_bearer_token(harness: Harness) -> None:
    await collect(harness.client())

    for call in harness.state.api_calls:
        assert call.headers["tlinkAppId"] == "app-42"
        assert call.headers["Authorization"] == f"Bearer {harness.state.issued_tokens[0]}"


async def test_token_request_uses_basic_auth_and_password_grant(harness: Harness) -> None:
    await harness.client(scope="read").get_device_sensor_datas(USER_ID, 1, 2)

    assert harness.state.grants == ["password"]
    assert harness.grants_seen == ["password"]


async def test_explicit_token_url_is_used(harness: Harness) -> None:
    client = harness.client(
        base_url=f"http://127.0.0.1:{unused_port()}", token_url=str(harness.server.make_url(TOKEN_PATH))
    )

    with pytest.raises(TlinkConnectionError):
        await client.get_device_sensor_datas(USER_ID, 1, 2)
    assert harness.state.grants == ["password"]  # the token came from token_url


# --------------------------------------------------------------------------- tokens


async def test_token_is_cached_across_calls(harness: Harness) -> None:
    client = harness.client()
    await collect(client)
    await client.get_device_sensor_datas(USER_ID, 1, 2)

    assert harness.token_count() == 1
    assert harness.api_count() == 4
    assert set(harness.state.tokens_seen) == {harness.state.issued_tokens[0]}


async def test_concurrent_calls_share_one_token_request(harness: Harness) -> None:
    client = harness.client()
    await asyncio.gather(*(client.get_device_sensor_datas(USER_ID, page, 2) for page in (1, 2, 3)))

    assert harness.token_count() == 1


async def test_token_is_refreshed_before_expiry(harness: Harness) -> None:
    client = harness.client(refresh_buffer_seconds=60)
    await client.get_device_sensor_datas(USER_ID, 1, 2)

    harness.clock.advance(3600 - 60 - 1)  # still outside the buffer
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    assert harness.state.grants == ["password"]

    harness.clock.advance(2)  # now inside the buffer, before expiry
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    assert harness.state.grants == ["password", "refresh_token"]
    assert harness.grants_seen == ["password", "refresh_token"]
    first, second = harness.state.issued_tokens
    assert harness.state.tokens_seen == [first, first, second]


async def test_short_lived_token_is_not_renewed_on_every_call(harness: Harness) -> None:
    harness.state.expires_in = 30  # shorter than the 60 s buffer
    client = harness.client()
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    harness.clock.advance(10)
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    assert harness.state.grants == ["password"]

    harness.clock.advance(10)  # past half its lifetime
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    assert harness.state.grants == ["password", "refresh_token"]


async def test_failed_refresh_falls_back_to_password_grant(harness: Harness) -> None:
    client = harness.client()
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    harness.state.fail_refresh_grant = 1
    harness.clock.advance(3600)

    answer = await client.get_device_sensor_datas(USER_ID, 1, 2)

    assert len(answer["dataList"]) == 2
    assert harness.state.grants == ["password", "password"]  # the refresh grant was refused
    assert harness.token_count() == 3
    assert harness.grants_seen == ["password", "password"]


async def test_wrong_password_raises_auth_error_without_secrets(harness: Harness) -> None:
    client = harness.client(password="wrong-" + PASSWORD)

    with pytest.raises(TlinkAuthError) as caught:
        await client.get_device_sensor_datas(USER_ID, 1, 2)

    assert caught.value.status == 400
    assert "Bad credentials" in str(caught.value)
    assert PASSWORD not in str(caught.value) and CLIENT_SECRET not in str(caught.value)
    assert harness.api_count() == 0


async def test_wrong_client_secret_raises_auth_error(harness: Harness) -> None:
    with pytest.raises(TlinkAuthError, match="401") as caught:
        await harness.client(client_secret="not-the-secret").get_device_sensor_datas(USER_ID, 1, 2)
    assert "not-the-secret" not in str(caught.value)


# --------------------------------------------------------------------------- 401


async def test_one_401_gets_a_fresh_token_and_one_retry(harness: Harness) -> None:
    client = harness.client()
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    harness.state.fail_next_api_with_401 = 1

    answer = await client.get_device_sensor_datas(USER_ID, 2, 2)

    assert [device["id"] for device in answer["dataList"]] == [3002, 3003]
    assert harness.api_count() == 3
    assert harness.state.grants == ["password", "refresh_token"]
    first, second = harness.state.issued_tokens
    assert harness.state.tokens_seen == [first, first, second]


async def test_second_401_raises_without_a_third_try(harness: Harness) -> None:
    harness.state.fail_next_api_with_401 = 2

    with pytest.raises(TlinkAuthError) as caught:
        await harness.client().get_device_sensor_datas(USER_ID, 1, 2)

    assert caught.value.status == 401
    assert harness.api_count() == 2
    assert_no_secret(str(caught.value), harness.state)


async def test_token_expired_on_the_server_is_renewed(harness: Harness, server_clock: FakeClock) -> None:
    client = harness.client()
    await client.get_device_sensor_datas(USER_ID, 1, 2)
    server_clock.advance(4000)  # the server expires the token; the client's clock did not move

    answer = await client.get_device_sensor_datas(USER_ID, 1, 2)

    assert answer["currPage"] == 1
    assert harness.api_count() == 3
    assert harness.state.grants == ["password", "refresh_token"]


# --------------------------------------------------------------------------- errors


async def test_flag_01_raises_with_flag_and_msg(harness: Harness) -> None:
    harness.state.flag01 = True

    with pytest.raises(TlinkError) as caught:
        await harness.client().get_device_sensor_datas(USER_ID, 1, 2)

    error = caught.value
    assert isinstance(error, TlinkBusinessError)
    assert (error.flag, error.msg) == ("01", "page size too large")
    assert "'01'" in str(error) and "page size too large" in str(error)
    assert_no_secret(str(error), harness.state)


async def test_server_500_raises_api_error_with_status_and_message(harness: Harness) -> None:
    harness.state.fail_with_500 = 1
    client = harness.client()

    with pytest.raises(TlinkApiError) as caught:
        await client.get_device_sensor_datas(USER_ID, 1, 2)

    assert caught.value.status == 500
    assert "500" in str(caught.value) and "fake TLINK failure" in str(caught.value)
    assert_no_secret(str(caught.value), harness.state)
    # The switch was a count of one: the next call goes through.
    assert (await client.get_device_sensor_datas(USER_ID, 1, 2))["currPage"] == 1


async def test_slow_answer_raises_tlink_timeout(harness: Harness) -> None:
    harness.state.delay_seconds = 1.0

    with pytest.raises(TlinkTimeout, match=r"timed out after 0\.2 s") as caught:
        await harness.client(timeout_seconds=0.2).get_device_sensor_datas(USER_ID, 1, 2)

    assert isinstance(caught.value, TlinkError)
    assert_no_secret(str(caught.value), harness.state)


async def test_unreachable_server_raises_connection_error() -> None:
    config = TlinkClientConfig(
        base_url=f"http://127.0.0.1:{unused_port()}",
        app_id="app-42",
        client_id="example-client",
        client_secret=CLIENT_SECRET,
        username="demo",
        password=PASSWORD,
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TlinkConnectionError, match="token request") as caught:
            await TlinkClient(session, config).get_device_sensor_datas(USER_ID, 1, 2)

    assert isinstance(caught.value, TlinkError)
    assert_no_secret(str(caught.value), FakeTlinkState())


async def test_answer_without_data_list_is_refused(aiohttp_server: ServerFactory) -> None:
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t-1", "expires_in": 3600})

    async def datas(request: web.Request) -> web.Response:
        return web.json_response({"flag": "00", "msg": "", "pages": 1})

    app = web.Application()
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_get(SENSOR_DATA_PATH, datas)
    server = await aiohttp_server(app)
    config = TlinkClientConfig(
        base_url=str(server.make_url("")), app_id="a", client_id="c", client_secret="s", username="u", password="p"
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TlinkApiError, match="dataList"):
            await TlinkClient(session, config).get_device_sensor_datas(USER_ID, 1, 2)


# --------------------------------------------------------------------------- secrets


async def test_secrets_never_reach_logs_or_repr(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="service.jobs.tlink_client")
    client = harness.client()
    await collect(client)
    harness.state.fail_next_api_with_401 = 1
    harness.state.fail_refresh_grant = 1
    await client.get_device_sensor_datas(USER_ID, 1, 2)

    assert caplog.records, "the client is expected to log its token renewals"
    assert_no_secret(caplog.text, harness.state)
    assert_no_secret(repr(harness.config()), harness.state)


async def test_config_defaults_and_validation() -> None:
    config = TlinkClientConfig(
        base_url="https://app.dtuip.com/", app_id="a", client_id="c", client_secret="s", username="u", password="p"
    )
    assert config.resolved_token_url == "https://app.dtuip.com/oauth/token"
    assert config.sensor_data_path == "/api/device/getDeviceSensorDatas"
    assert (config.http_method, config.refresh_buffer_seconds) == ("GET", 60)
    with pytest.raises(ValueError, match="http_method"):
        dataclasses.replace(config, http_method="PUT")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.password = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- fake server


async def test_fake_refuses_page_size_over_100(harness: Harness) -> None:
    client = harness.client()
    await client.get_device_sensor_datas(USER_ID, 1, 2)  # obtain a token
    headers = {"Authorization": f"Bearer {harness.state.access_token}", "Content-Type": "application/json"}
    async with harness.session.get(
        harness.server.make_url(SENSOR_DATA_PATH),
        json={"userId": USER_ID, "currPage": 1, "pageSize": 101},
        headers=headers,
    ) as response:
        answer = await response.json()
    assert response.status == 200 and answer["flag"] == "01"


async def test_fake_refuses_missing_token(harness: Harness) -> None:
    async with harness.session.get(
        harness.server.make_url(SENSOR_DATA_PATH), json={"userId": USER_ID, "currPage": 1, "pageSize": 2}
    ) as response:
        answer = await response.json()
    assert response.status == 401
    assert set(answer) == {"timestamp", "status", "error", "message", "path"}


async def test_fake_switches_are_settable_over_http(harness: Harness) -> None:
    url = harness.server.make_url("/_control")
    async with harness.session.post(url, json={"flag01": True, "fail_with_500": 2, "delay_seconds": 0.5}) as response:
        assert response.status == 200
    async with harness.session.post(url, json={"no_such_switch": 1}) as refused:
        assert refused.status == 400
    async with harness.session.post(url, json={"fail_with_500": True}) as refused_type:
        assert refused_type.status == 400

    state = harness.server.app[FAKE_TLINK_STATE]
    assert (state.flag01, state.fail_with_500, state.delay_seconds) == (True, 2, 0.5)
    assert state.requests["POST /_control"] == 3
