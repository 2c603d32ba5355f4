"""The connection handler of every server of the app: JSON answers to requests aiohttp's parser refuses,
and a deadline for the request head."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from service.config import Settings
from service.http.middleware.errors import error_response

# Seconds an idle keep-alive connection is kept open (aiohttp's run_app default; above the
# 60 s most reverse proxies keep idle upstream connections, so they close them first).
KEEPALIVE_TIMEOUT = 75.0


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with JSON answers to requests its parser refuses and a head deadline.

    A request aiohttp cannot parse (a bad method or request line, Content-Length with
    Transfer-Encoding, an unsupported Transfer-Encoding, oversized headers) never reaches
    the application and its middlewares: aiohttp answers it from `handle_error`, in
    text/plain, and logs it at ERROR with a traceback. Here it is answered
    `{"error": "..."}` like every other error and logged at DEBUG (it is the client's
    mistake); a 500 is still logged as aiohttp does.

    `head_timeout`: a connection must deliver a whole request head within this many
    seconds of its opening, or of the first byte of a later request's head; otherwise it
    is closed. aiohttp's keep-alive timer also closes a connection still waiting for a
    head, but only after the keep-alive time, which must stay above the proxies' idle time.
    """

    __slots__ = ("_head_for", "_head_timeout", "_head_timer")

    def __init__(self, manager: web.Server, *, head_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_for = -1  # the request count the armed deadline is for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiter = self._waiter
        # Bytes arrived while no request is pending and the head is still incomplete: a new head started.
        if data and waiter is not None and not waiter.done():
            self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_timeout is None or self._head_for == self._request_count:
            return  # off, or this head's deadline is already running
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_for = self._request_count
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_for and not self._force_close:  # no new head was parsed
            self.log_debug("closing a connection that sent no complete request head in %s s", self._head_timeout)
            self.force_close()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # After answering, aiohttp reads and drops the rest of an unread body ("lingering");
        # a body that turns out malformed there (bad chunks, not the gzip it claims) ends the
        # connection, which is all it deserves: the client's error, not the service's.
        if isinstance(kwargs.get("exc_info"), web.RequestPayloadError | HttpProcessingError):
            self.logger.debug("closed a connection whose body was malformed: %r", kwargs["exc_info"])
            return
        super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp: an answer was already started
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        self.logger.debug("refused a malformed request from %s: %r", request.remote, exc)
        detail = exc.message if isinstance(exc, HttpProcessingError) and exc.message else message
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
        response = error_response(status, f"{reason}: {detail}" if detail else reason)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, making JsonErrorRequestHandler connections."""

    def __call__(self) -> web.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


def server_options(settings: Settings) -> dict[str, Any]:
    """The options of the connection handler, for run_app and aiohttp's test server alike."""
    return {"keepalive_timeout": KEEPALIVE_TIMEOUT, "head_timeout": settings.HEADER_READ_TIMEOUT_SECONDS}
