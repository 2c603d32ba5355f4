"""POST /api/webhooks/tlink: authenticate, check, store durably, answer."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from aiohttp import web

from eventlog.readings import InvalidBody
from service.body import parse_object
from service.errors import ApiError, json_response
from service.keys import DEAD_LETTERED, DEAD_LETTERS, INGESTOR, PUSH_OUTCOME, SETTINGS, STORED_READINGS

WEBHOOK_PATH = "/api/webhooks/tlink"


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """`sha256=<hex>` or a bare hex HMAC-SHA256 of the raw body, compared in constant time."""
    if not header:
        return False
    given = header.strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256=") :]
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.lower())


def authenticate(request: web.Request, body: bytes) -> None:
    """401 unless the configured token and signature checks pass."""
    settings = request.app[SETTINGS]
    if settings.WEBHOOK_TOKEN:
        token = request.query.get("token", "")
        if not hmac.compare_digest(token.encode(), settings.WEBHOOK_TOKEN.encode()):
            raise ApiError(401, "missing or wrong ?token=")
    if settings.PUSH_WEBHOOK_SECRET:
        if not signature_ok(settings.PUSH_WEBHOOK_SECRET, body, request.headers.get("X-TLink-Signature")):
            raise ApiError(401, "missing or wrong X-TLink-Signature")


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object holding exactly what it says, or InvalidBody saying why not
    (see service.body: nesting depth, duplicate keys, numbers a double does not hold)."""
    return parse_object(body)


async def receive_push(request: web.Request) -> web.Response:
    """Store one TLINK push; 200 only once its event line is on disk."""
    body = await request.read()
    authenticate(request, body)
    try:
        result = await request.app[INGESTOR].push(parse_json(body))
    except InvalidBody as exc:
        await request.app[DEAD_LETTERS].keep(body, str(exc), request.remote)
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


def setup(app: web.Application) -> None:
    """Register the webhook route."""
    app.router.add_post(WEBHOOK_PATH, receive_push)

