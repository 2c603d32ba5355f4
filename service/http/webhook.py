"""POST /api/webhooks/tlink: authenticate, check, store durably, answer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from aiohttp import web

from projections.readings import InvalidBody
from service.http.body import parse_object
from service.http.keys import BODY_BUDGET, DEAD_LETTERED, PUSH_OUTCOME, SERVICES, SETTINGS, STORED_READINGS
from service.http.middleware.auth import secret_equal
from service.http.middleware.errors import ApiError, json_response
from service.metrics import ABORTED

WEBHOOK_PATH = "/api/webhooks/tlink"


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """`sha256=<hex>` or a bare hex HMAC-SHA256 of the raw body, compared in constant time."""
    if not header:
        return False
    given = header.strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256=") :]
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return secret_equal(given.lower(), expected)


def single(values: list[str], name: str) -> str | None:
    """The one value of a header or parameter, None when absent; 400 when repeated."""
    if len(values) > 1:
        raise ApiError(400, f"{name} given more than once")
    return values[0] if values else None


def check_credentials(request: web.Request) -> str | None:
    """401 unless `?token=` is right and, with a secret, one X-TLink-Signature is there; its value.

    Runs before the body is read, so a client without credentials never gets its body buffered.
    """
    settings = request.app[SETTINGS]
    if settings.WEBHOOK_TOKEN:
        token = single(request.query.getall("token", []), "?token=")
        if token is None or not secret_equal(token, settings.WEBHOOK_TOKEN):
            raise ApiError(401, "missing or wrong ?token=")
    if not settings.PUSH_WEBHOOK_SECRET:
        return None
    signature = single(request.headers.getall("X-TLink-Signature", []), "X-TLink-Signature")
    if not signature:
        raise ApiError(401, "missing or wrong X-TLink-Signature")
    return signature


def authenticate(request: web.Request, body: bytes, signature: str | None) -> None:
    """401 unless `signature` (check_credentials' answer) signs the body; no check without a secret."""
    secret = request.app[SETTINGS].PUSH_WEBHOOK_SECRET
    if secret and not signature_ok(secret, body, signature):
        raise ApiError(401, "missing or wrong X-TLink-Signature")


async def read_body(request: web.Request) -> bytes:
    """The raw body, read within BODY_READ_TIMEOUT_SECONDS; 408, 413 or 400 when it cannot be had."""
    settings = request.app[SETTINGS]
    declared = request.content_length
    if declared is not None and declared > settings.MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=settings.MAX_BODY_BYTES, actual_size=declared)
    # A chunked body's size is known only once read: it may take up to MAX_BODY_BYTES.
    with request.app[BODY_BUDGET].reserve(settings.MAX_BODY_BYTES if declared is None else declared):
        try:
            async with asyncio.timeout(settings.BODY_READ_TIMEOUT_SECONDS):
                return await request.read()
        except TimeoutError:
            raise ApiError(
                408, f"request body not received within {settings.BODY_READ_TIMEOUT_SECONDS:g} s"
            ) from None
        except ConnectionError:  # the client went away mid-upload: nobody to answer
            request[PUSH_OUTCOME] = ABORTED
            raise ApiError(400, "the client closed the connection before sending the whole body") from None
        except web.RequestPayloadError as exc:  # a Content-Encoding the body does not follow, a bad chunk
            raise ApiError(400, f"cannot read the body: {exc}") from None


async def receive_push(request: web.Request) -> web.Response:
    """Store one TLINK push; 200 only once its event line is on disk."""
    signature = check_credentials(request)
    settings = request.app[SETTINGS]
    if settings.BUS_URL and settings.NODE_ROLE == "writer":
        raise ApiError(503, "this node only writes partitions (--role writer): send pushes to an ingest node")
    body = await read_body(request)
    authenticate(request, body, signature)
    services = request.app[SERVICES]
    try:
        result = await services.ingestor.push(parse_object(body))
    except InvalidBody as exc:
        await services.dead_letters.keep(body, str(exc), request.remote)
        request[DEAD_LETTERED] = True
        raise
    # Read by the metrics middleware: the outcome and what was stored.
    request[PUSH_OUTCOME] = "duplicate" if result.duplicate else "ok"
    request[STORED_READINGS] = result.stored_readings
    return json_response(
        {
            "status": "ok",
            "storedReadings": result.stored_readings,
            "eventId": result.event_id,
            "duplicate": result.duplicate,
            "projected": result.projected,
        }
    )
