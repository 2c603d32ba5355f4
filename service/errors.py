"""One middleware maps every error to a JSON answer `{"error": "..."}`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from eventlog.db import DatabaseUnavailable
from eventlog.readings import InvalidBody
from eventlog.store import LogUnavailable

log = logging.getLogger("tlink.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error the API answers with its own status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: object, status: int = 200) -> web.Response:
    """A JSON answer serialized with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    """The error shape of every endpoint."""
    return json_response({"error": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Known errors become 4xx/5xx JSON; anything unexpected is logged and answered 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except InvalidBody as exc:
        return error_response(400, str(exc))
    except DatabaseUnavailable:  # the read models cannot be reached: retry later
        return error_response(503, "the database is unavailable; retry later")
    except LogUnavailable as exc:
        log.error("push refused: %s", exc)
        return error_response(503, "the event log cannot be written; retry later")
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, f"request body too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")
