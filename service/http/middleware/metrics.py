"""The middleware that counts and times every request once (service.metrics holds the instruments).

A webhook push is counted by its outcome (`tlink_webhook_*`); any other request by its
route template, method and status class (`tlink_http_*`).
"""

from __future__ import annotations

import time

from aiohttp import hdrs, web

from service.http.keys import DEAD_LETTERED, METRICS, PUSH_OUTCOME, STORED_READINGS
from service.http.middleware.errors import Handler
from service.http.stream import STREAM_PATH
from service.http.webhook import WEBHOOK_PATH
from service.metrics import ABORTED, OTHER_METHOD, UNMATCHED, outcome_of_status


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time the request, with the status of the answer the client gets."""
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
    resource = request.match_info.route.resource
    route = UNMATCHED if resource is None else resource.canonical
    if route == WEBHOOK_PATH and request.method == hdrs.METH_POST:
        _observe_push(request, status, seconds)
        return
    method = request.method
    if resource is None and method not in hdrs.METH_ALL:
        method = OTHER_METHOD
    # A live stream's time is how long its client stayed: tlink_stream_open shows those.
    request.app[METRICS].observe_request(route, method, status, None if route == STREAM_PATH else seconds)


def _observe_push(request: web.Request, status: int, seconds: float) -> None:
    # The handler's own label: ok/duplicate on success, aborted (whatever was answered) for a
    # client that disconnected mid-upload.
    labelled = request.get(PUSH_OUTCOME)
    outcome = labelled if labelled is not None and (status < 300 or labelled == ABORTED) else outcome_of_status(status)
    stored, dead_lettered = request.get(STORED_READINGS, 0), request.get(DEAD_LETTERED, False)
    request.app[METRICS].observe_push(outcome, seconds, stored, dead_lettered)
