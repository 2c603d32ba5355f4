"""The middleware that counts and times webhook pushes by outcome (service.metrics holds the instruments)."""

from __future__ import annotations

import time

from aiohttp import web

from service.http.keys import DEAD_LETTERED, METRICS, PUSH_OUTCOME, STORED_READINGS
from service.http.middleware.errors import Handler
from service.http.webhook import WEBHOOK_PATH
from service.metrics import ABORTED, outcome_of_status


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time webhook pushes by outcome; other paths pass through untouched."""
    if request.path != WEBHOOK_PATH or request.method != "POST":
        return await handler(request)
    started = time.perf_counter()
    try:
        # The error middleware runs inside this one (see create_app), so errors have become
        # their answers and the status counted is the one the client gets.
        response = await handler(request)
    except web.HTTPException as exc:  # a non-error HTTP exception passes through error_middleware
        _observe(request, exc.status, time.perf_counter() - started)
        raise
    _observe(request, response.status, time.perf_counter() - started)
    return response


def _observe(request: web.Request, status: int, seconds: float) -> None:
    # The handler's own label: ok/duplicate on success, aborted (whatever was answered) for a
    # client that disconnected mid-upload.
    labelled = request.get(PUSH_OUTCOME)
    outcome = labelled if labelled is not None and (status < 300 or labelled == ABORTED) else outcome_of_status(status)
    stored, dead_lettered = request.get(STORED_READINGS, 0), request.get(DEAD_LETTERED, False)
    request.app[METRICS].observe_push(outcome, seconds, stored, dead_lettered)
