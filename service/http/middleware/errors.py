"""One middleware maps every error to a JSON answer `{"error": "..."}`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from eventlog.store import LogUnavailable
from projections.db import DatabaseUnavailable
from projections.readings import InvalidBody

log = logging.getLogger("tlink.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error the API answers with its own status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(data: object, status: int = 200) -> web.Response:
    """A JSON answer serialized with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The error shape of every endpoint."""
    response = json_response({"error": message}, status=status)
    response.headers.update(headers or {})
    return response


# Headers of an aiohttp HTTP error that say something to the client (405's Allow above all).
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Known errors become 4xx/5xx JSON; anything unexpected is logged and answered 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
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
        return error_response(exc.status, exc.reason, {k: exc.headers[k] for k in KEPT_HEADERS if k in exc.headers})
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")
