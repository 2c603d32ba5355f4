"""CORS for /api/*: origins from CORS_ALLOWED_ORIGINS (`*` by default), preflights answered here.

The Access-Control-Allow-Origin header is added as each response is prepared, so error
answers made by the error middleware carry it too and a browser can read them.
"""

from __future__ import annotations

from aiohttp import web

from service.http.keys import SETTINGS
from service.http.middleware.errors import Handler, error_response

ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-TLink-Signature, If-None-Match"
EXPOSE_HEADERS = "WWW-Authenticate, ETag"  # ETag: so browser code can send it back as If-None-Match
MAX_AGE = "600"


def allowed_origin(origins: list[str], origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for this origin, or None if it is not allowed."""
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights for /api/* (204, or 403 for an origin not allowed)."""
    headers = request.headers
    if request.method == "OPTIONS" and _is_api(request) and "Origin" in headers:
        if "Access-Control-Request-Method" in headers:
            return _preflight(request)
    return await handler(request)


def _preflight(request: web.Request) -> web.StreamResponse:
    origin = request.headers["Origin"]
    allow = allowed_origin(request.app[SETTINGS].CORS_ALLOWED_ORIGINS, origin)
    if allow is None:
        return error_response(403, f"origin {origin} is not allowed (CORS_ALLOWED_ORIGINS)")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": allow,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
        },
    )


async def add_origin(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the Allow-Origin header on every /api/* answer to an allowed origin."""
    if not _is_api(request):
        return
    origins = request.app[SETTINGS].CORS_ALLOWED_ORIGINS
    if "*" not in origins:
        response.headers.add("Vary", "Origin")  # the answer depends on the Origin header
    origin = request.headers.get("Origin")
    allow = allowed_origin(origins, origin) if origin else None
    if allow is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
