"""Hostile clients at the transport: credentials checked before the body is read, bounded reads, JSON refusals.

The app is served as `tlink-push serve` serves it (AppRunner, the same connection handler
and options), with WEBHOOK_TOKEN, PUSH_WEBHOOK_SECRET and API_KEYS set; malformed HTTP,
stalls and disconnects are sent over raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from service.http.app import create_app, use_json_error_server
from service.http.connections import server_options
from service.http.keys import BODY_BUDGET, METRICS
from tests.conftest import MakeSettings, fixture_bytes

SAMPLE = fixture_bytes("sample_push.json")
TOKEN = "tok-123"
SECRET = "s3cret"
KEY = "read-key"
WEBHOOK = "/api/webhooks/tlink"
# Only guards against a hang: every wait below ends on the server's answer or close.
GUARD = 30.0


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Served:
    app: web.Application
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def raw(self, request: bytes) -> Answer:
        """Send these bytes, read the answer until the server closes or the body is complete."""
        reader, writer = await self.open()
        try:
            writer.write(request)
            await writer.drain()
            return await asyncio.wait_for(read_answer(reader), GUARD)
        finally:
            await shut(writer)

    async def outcome(self, name: str) -> float:
        return self.app[METRICS].webhook_requests.labels(name)._value.get()  # type: ignore[no-any-return]

    async def scrape(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as resp:
            return await resp.text()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return orjson.loads(self.body)


async def shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length)
    return Answer(int(status_line.split()[1]), headers, body)


def head(
    content_length: int | None = None,
    *,
    target: str = f"{WEBHOOK}?token={TOKEN}",
    signature: str | None = "sha256=" + "0" * 64,
    extra: bytes = b"",
) -> bytes:
    lines = [f"POST {target} HTTP/1.1".encode(), b"Host: test", b"Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}".encode())
    else:
        lines.append(b"Transfer-Encoding: chunked")
    if signature is not None:
        lines.append(b"X-TLink-Signature: " + signature.encode())
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The transport does not depend on the backend: SQLite only."""
    return sqlite_url


@pytest.fixture
async def serve(make_settings: MakeSettings) -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> Served:
        values = {"WEBHOOK_TOKEN": TOKEN, "PUSH_WEBHOOK_SECRET": SECRET, "API_KEYS": [KEY], **overrides}
        settings = make_settings(**values)
        app = create_app(settings)
        use_json_error_server(app)
        runner = web.AppRunner(app, **server_options(settings))
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return Served(app, runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Callable[[], None]:
    """A check that nothing at WARNING or above, and no traceback, was logged."""
    caplog.set_level(logging.DEBUG)

    def check() -> None:
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING or (r.exc_info and r.levelno > logging.DEBUG)]
        assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]

    return check


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll the server's state (not the clock) until the condition holds."""
    for _ in range(int(GUARD / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


# 1. credentials before the body; bounded reads


async def test_no_token_is_refused_before_the_body_arrives(serve, quiet):
    served = await serve()
    reader, writer = await served.open()
    writer.write(head(960 * 1024, target=WEBHOOK) + b" " * 1024)  # the rest of the body never comes
    answer = await asyncio.wait_for(read_answer(reader), GUARD)
    await shut(writer)
    assert answer.status == 401
    assert answer.json() == {"error": "missing or wrong ?token="}
    assert served.app[BODY_BUDGET].used == 0
    quiet()


async def test_a_missing_signature_is_refused_before_the_body_arrives(serve, quiet):
    served = await serve()
    reader, writer = await served.open()
    writer.write(head(960 * 1024, signature=None) + b" " * 1024)
    answer = await asyncio.wait_for(read_answer(reader), GUARD)
    await shut(writer)
    assert answer.status == 401
    assert answer.json() == {"error": "missing or wrong X-TLink-Signature"}
    quiet()


async def test_a_declared_body_over_the_limit_is_413_before_it_arrives(serve, quiet):
    served = await serve(MAX_BODY_BYTES=1024)
    reader, writer = await served.open()
    writer.write(head(2048) + b" " * 100)
    answer = await asyncio.wait_for(read_answer(reader), GUARD)
    await shut(writer)
    assert answer.status == 413
    assert answer.json()["error"].startswith("request body too large:")
    assert await served.outcome("too_large") == 1
    quiet()


async def test_a_body_that_stalls_is_408(serve, quiet):
    served = await serve(BODY_READ_TIMEOUT_SECONDS=0.2)
    reader, writer = await served.open()
    writer.write(head(len(SAMPLE), signature=sign(SAMPLE)) + SAMPLE[:10])
    answer = await asyncio.wait_for(read_answer(reader), GUARD)
    await shut(writer)
    assert answer.status == 408
    assert answer.json() == {"error": "request body not received within 0.2 s"}
    assert served.app[BODY_BUDGET].used == 0
    quiet()


async def test_bodies_in_flight_are_bounded_and_the_excess_is_503_with_retry_after(serve, quiet):
    served = await serve(MAX_BODY_BYTES=1_048_576, MAX_BUFFERED_BODY_BYTES=1_572_864)
    budget = served.app[BODY_BUDGET]
    _, writer = await served.open()
    writer.write(head(1_000_000) + b" " * 1000)  # authenticated as far as can be told: being read
    await wait_until(lambda: budget.used == 1_000_000)

    for second in (head(1_000_000), head(None)):  # declared, and chunked (counted as MAX_BODY_BYTES)
        answer = await served.raw(second)
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == {"error": "too many push bodies in flight; retry later"}
    assert await served.outcome("unavailable") == 2

    fits = await served.raw(head(len(SAMPLE), signature=sign(SAMPLE)) + SAMPLE)
    assert fits.status == 200, fits.body
    await shut(writer)
    await wait_until(lambda: budget.used == 0)
    quiet()


async def test_a_request_head_that_stalls_is_closed(serve, quiet):
    served = await serve(HEADER_READ_TIMEOUT_SECONDS=0.2)
    reader, writer = await served.open()
    writer.write(b"POST /api/webhooks/tlink HTTP/1.1\r\nHost: test\r\n")
    assert await asyncio.wait_for(reader.read(), GUARD) == b""  # closed, nothing answered
    await shut(writer)

    silent_reader, silent = await served.open()  # a connection that never sends a byte
    assert await asyncio.wait_for(silent_reader.read(), GUARD) == b""
    await shut(silent)
    quiet()


async def test_a_keep_alive_connection_gets_a_new_head_deadline_per_request(serve, quiet):
    served = await serve(HEADER_READ_TIMEOUT_SECONDS=0.2)
    reader, writer = await served.open()
    writer.write(head(len(SAMPLE), signature=sign(SAMPLE)) + SAMPLE)
    assert (await asyncio.wait_for(read_answer(reader), GUARD)).status == 200
    writer.write(b"POST /api/webhooks/tlink HTTP/1.1\r\n")  # the second request's head stalls
    assert await asyncio.wait_for(reader.read(), GUARD) == b""
    await shut(writer)
    quiet()


# 2. a client gone mid-upload


async def test_a_client_gone_mid_upload_counts_as_aborted_quietly(serve, quiet):
    served = await serve()
    _, writer = await served.open()
    writer.write(head(len(SAMPLE), signature=sign(SAMPLE)) + SAMPLE[:10])
    await wait_until(lambda: served.app[BODY_BUDGET].used > 0)
    writer.transport.abort()
    await wait_until(lambda: served.app[BODY_BUDGET].used == 0)
    await wait_until(lambda: served.app[METRICS].webhook_seconds._sum.get() > 0)
    scraped = await served.scrape()
    assert 'tlink_webhook_requests_total{outcome="aborted"} 1.0' in scraped
    assert 'tlink_webhook_requests_total{outcome="error"} 0.0' in scraped
    assert 'tlink_webhook_requests_total{outcome="invalid"} 0.0' in scraped
    quiet()


# 3. what used to be unauthenticated 500s


async def test_a_non_ascii_signature_is_401(serve, quiet):
    served = await serve()
    answer = await served.raw(head(len(SAMPLE), signature="sha256=\u00e9") + SAMPLE)
    assert answer.status == 401
    assert answer.json() == {"error": "missing or wrong X-TLink-Signature"}
    raw = head(len(SAMPLE), signature=None, extra=b"X-TLink-Signature: sha256=\xff\xfe\r\n") + SAMPLE
    assert (await served.raw(raw)).status == 401
    quiet()


@pytest.mark.parametrize("token", ["%FF", "%ED%A0%80", "%C3%A9", "%00"])
async def test_a_token_that_is_not_text_is_401(serve, quiet, token):
    served = await serve()
    answer = await served.raw(head(len(SAMPLE), target=f"{WEBHOOK}?token={token}") + SAMPLE)
    assert answer.status == 401
    assert answer.json() == {"error": "missing or wrong ?token="}
    quiet()


@pytest.mark.parametrize("value", [b"Bearer \xff", b"Bearer \xed\xa0\x80", "Bearer \u00e9".encode()])
async def test_a_non_ascii_api_key_is_401(serve, quiet, value):
    served = await serve()
    answer = await served.raw(
        b"GET /api/users/1/devices HTTP/1.1\r\nHost: test\r\nAuthorization: " + value + b"\r\n\r\n"
    )
    assert answer.status == 401
    assert answer.json()["error"].startswith("missing or wrong API key")
    quiet()


async def test_a_body_that_is_not_the_gzip_it_claims_is_400(serve, quiet):
    served = await serve()
    body = b"this is not gzip"
    answer = await served.raw(head(len(body), signature=sign(body), extra=b"Content-Encoding: gzip\r\n") + body)
    assert answer.status == 400
    assert answer.json()["error"].startswith("cannot read the body:")
    assert await served.outcome("invalid") == 1
    quiet()


# 4. repeated credentials


async def test_a_repeated_token_is_400(serve, quiet):
    served = await serve()
    answer = await served.raw(head(len(SAMPLE), target=f"{WEBHOOK}?token={TOKEN}&token=other") + SAMPLE)
    assert answer.status == 400
    assert answer.json() == {"error": "?token= given more than once"}
    quiet()


async def test_two_signature_headers_are_400(serve, quiet):
    served = await serve()
    extra = b"X-TLink-Signature: " + sign(SAMPLE).encode() + b"\r\n"
    answer = await served.raw(head(len(SAMPLE), signature=sign(SAMPLE), extra=extra) + SAMPLE)
    assert answer.status == 400
    assert answer.json() == {"error": "X-TLink-Signature given more than once"}
    quiet()


async def test_two_authorization_headers_are_400(serve, quiet):
    served = await serve()
    request = (
        b"GET /api/users/1/devices HTTP/1.1\r\nHost: test\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nAuthorization: Bearer wrong\r\n\r\n"
    )
    answer = await served.raw(request)
    assert answer.status == 400
    assert answer.json() == {"error": "more than one Authorization header"}
    quiet()


async def test_a_signed_push_with_one_of_each_is_still_stored(serve, quiet):
    served = await serve()
    answer = await served.raw(head(len(SAMPLE), signature=sign(SAMPLE)) + SAMPLE)
    assert answer.status == 200 and answer.json()["status"] == "ok"
    quiet()


# 5. parser-level refusals are JSON; 405 keeps Allow


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"FO\x01O / HTTP/1.1\r\nHost: test\r\n\r\n", id="bad-method"),
        pytest.param(b"GARBAGE\r\n\r\n", id="bad-request-line"),
        pytest.param(head(10, extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", id="content-length-and-chunked"),
        pytest.param(head(None, extra=b"Transfer-Encoding: gzip\r\n") + b"0\r\n\r\n", id="transfer-encoding-gzip"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: test\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", id="header-too-long"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: test\r\nBad Header: x\r\n\r\n", id="bad-header-name"),
    ],
)
async def test_what_the_parser_refuses_is_a_json_400_logged_quietly(serve, quiet, request_bytes):
    served = await serve()
    answer = await served.raw(request_bytes)
    assert answer.status == 400
    error = answer.json()["error"]
    assert error.startswith("Bad Request"), error
    quiet()


async def test_trace_is_405_with_allow(serve, quiet):
    served = await serve()
    answer = await served.raw(b"TRACE /api/webhooks/tlink HTTP/1.1\r\nHost: test\r\n\r\n")
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json() == {"error": "Method Not Allowed"}
    quiet()
