"""Cache validators and compression for the read API: GET (and HEAD) /api/* answers.

Every 200 answer with a body carries a weak `ETag` computed from its bytes and
`Cache-Control: no-cache` (a client may keep it, and asks again with `If-None-Match`); a
request whose `If-None-Match` names the answer's tag (or is `*`) is answered 304 without a
body. Answers of at least GZIP_MIN_BYTES are gzipped for a client whose `Accept-Encoding`
accepts gzip (`Vary: Accept-Encoding`). The tag is the same for both codings (it is weak:
the two are the same answer), so a 304 holds whichever the client stored.

Streamed answers (the CSV export) are prepared by their handler, which computes its tag
from the data before streaming and uses `not_modified` and `negotiate_encoding` itself;
this middleware leaves every prepared answer alone. The webhook (POST) and /metrics
(outside /api) are not touched.
"""

from __future__ import annotations

import hashlib

from aiohttp import hdrs, web

from service.http.middleware.errors import Handler
from service.http.query import q_value

GZIP_MIN_BYTES = 1024  # smaller answers are sent as they are: gzip would save little or nothing
CACHE_CONTROL = "no-cache"  # store, but revalidate every time (If-None-Match)
CACHED_METHODS = frozenset({"GET", "HEAD"})


def cached(request: web.Request) -> bool:
    """Does this request get validators and compression?"""
    return request.method in CACHED_METHODS and request.path.startswith("/api/")


def etag_of(*parts: bytes) -> str:
    """A weak entity tag of these bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part)
    return f'W/"{digest.hexdigest()}"'


def _opaque(tag: str) -> str:
    """The tag without its weakness mark: If-None-Match compares weakly (RFC 9110, 13.1.2)."""
    return tag[2:] if tag.startswith("W/") else tag


def matches(request: web.Request, etag: str) -> bool:
    """Does the request's If-None-Match name this tag (or `*`)?"""
    wanted = _opaque(etag)
    for header in request.headers.getall(hdrs.IF_NONE_MATCH, []):
        for tag in header.split(","):
            tag = tag.strip()
            if tag == "*" or _opaque(tag) == wanted:
                return True
    return False


def not_modified(etag: str, vary: bool) -> web.Response:
    """304: the client's stored answer is still the answer."""
    response = web.Response(status=304, headers={hdrs.ETAG: etag, hdrs.CACHE_CONTROL: CACHE_CONTROL})
    if vary:
        response.headers.add(hdrs.VARY, hdrs.ACCEPT_ENCODING)
    return response


def accepts_gzip(request: web.Request) -> bool:
    """Does Accept-Encoding accept gzip (gzip, x-gzip or *, with a q value above 0)?"""
    quality: float | None = None
    star: float | None = None
    for header in request.headers.getall(hdrs.ACCEPT_ENCODING, []):
        for item in header.split(","):
            coding, *options = item.strip().split(";")
            q = q_value(options)
            coding = coding.strip().lower()
            if coding in ("gzip", "x-gzip"):
                quality = q if quality is None else max(quality, q)
            elif coding == "*":
                star = q
    if quality is None:
        quality = star
    return quality is not None and quality > 0


def negotiate_encoding(request: web.Request, response: web.StreamResponse) -> None:
    """Before `response` is prepared: gzip it if the client accepts gzip; say that the coding depends on it."""
    response.headers.add(hdrs.VARY, hdrs.ACCEPT_ENCODING)
    if accepts_gzip(request):
        response.enable_compression(web.ContentCoding.gzip)


def validate(response: web.StreamResponse, etag: str) -> None:
    """Put the validator headers on an answer."""
    response.headers[hdrs.ETAG] = etag
    response.headers[hdrs.CACHE_CONTROL] = CACHE_CONTROL


@web.middleware
async def cache_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ETag, 304 and gzip for 200 answers of GET /api/*; every other answer passes untouched."""
    response = await handler(request)
    if not cached(request) or response.status != 200 or response.prepared or not isinstance(response, web.Response):
        return response
    body = response.body
    if not isinstance(body, bytes):
        return response
    etag = etag_of(body)
    compressible = len(body) >= GZIP_MIN_BYTES
    if matches(request, etag):
        return not_modified(etag, compressible)
    validate(response, etag)
    if compressible:
        negotiate_encoding(request, response)
    return response
