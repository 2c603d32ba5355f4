"""API keys for the read endpoints: with API_KEYS set, `GET /api/...` needs `Authorization: Bearer <key>`.

The live stream (`/api/users/<userId>/stream`) also takes the key as `?access_token=<key>`,
because a browser's EventSource cannot send headers; a key in a URL reaches access logs and
proxies, so only that route takes it there (docs/stream.md).

Exempt: /api/health and /api/ready (liveness and readiness probes carry no secrets),
/api/docs (a static page: the key is typed into it and it fetches the document with it),
CORS preflights (browsers never send credentials on them) and the webhook, which has
its own token/signature checks.
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web

from service.http.keys import SETTINGS
from service.http.middleware.errors import Handler, error_response

EXEMPT_PATHS = frozenset({"/api/health", "/api/ready", "/api/docs"})
GUARDED_METHODS = frozenset({"GET", "HEAD"})
ACCESS_TOKEN = "access_token"
_TOKEN_PATH_RE = re.compile(r"/api/users/[^/]+/stream\Z")  # the one route that takes ?access_token=


def raw_bytes(text: str) -> bytes | None:
    """The bytes a header or query value was decoded from, or None when they cannot be recovered.

    Header values the client sent as invalid UTF-8 arrive with surrogate escapes; both
    give back the client's bytes, so a comparison never raises on what a client sent.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def secret_equal(given: str, secret: str) -> bool:
    """Is `given` the secret? Constant time; False for any value that is not text of bytes."""
    candidate = raw_bytes(given)
    return candidate is not None and hmac.compare_digest(candidate, secret.encode())


def key_ok(keys: list[str], header: str | None) -> bool:
    """Does the Authorization header carry one of the keys? Compares with every key in constant time."""
    scheme, _, given = (header or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return False
    matched = False
    for key in keys:
        matched |= secret_equal(given, key)
    return matched


def guarded(request: web.Request) -> bool:
    """Does this request need an API key?"""
    return request.method in GUARDED_METHODS and request.path.startswith("/api/") and request.path not in EXEMPT_PATHS


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for a guarded request without a valid key; everything else passes."""
    keys = request.app[SETTINGS].API_KEYS
    if keys and guarded(request):
        if len(request.headers.getall("Authorization", [])) > 1:
            return error_response(400, "more than one Authorization header")
        header = request.headers.get("Authorization")
        if header is None and _TOKEN_PATH_RE.match(request.path):
            tokens = request.query.getall(ACCESS_TOKEN, [])
            if len(tokens) > 1:
                return error_response(400, "more than one access_token")
            header = f"Bearer {tokens[0]}" if tokens else None
        if not key_ok(keys, header):
            return error_response(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                {"WWW-Authenticate": 'Bearer realm="tlink-push"'},
            )
    return await handler(request)
