"""GET /dashboard, GET /api/docs and GET /static/{name}: the pages the service serves itself.

The pages and their scripts are static files under service/http/static/ (shipped as
package data), the libraries they use are vendored under static/vendor/ by
ops/vendor_web.sh: nothing is fetched from elsewhere at run time. All URLs in the pages
are relative, so they work over HTTPS and behind a proxy that serves the service under a
path prefix.

The pages carry no secrets: the API key is typed into the page and kept in the browser's
sessionStorage. /dashboard fills in the three facts its script needs to ask the API the
right questions: the platform's clock (TLINK_TIMEZONE and its offset now) and
MAX_HISTORY_LIMIT.
"""

from __future__ import annotations

import html
from datetime import datetime
from functools import cache
from pathlib import Path

from aiohttp import web

from service.config import Settings
from service.http.keys import SETTINGS
from service.http.middleware.errors import ApiError
from service.http.query import Param

STATIC = Path(__file__).parent / "static"
JAVASCRIPT = "text/javascript"
CSS = "text/css"
HTML = "text/html"

# Every file /static/{name} serves: its name in the URL -> (its path under STATIC, its type).
# Only these are served (the OpenAPI document lists them), so no URL reaches another file.
ASSETS: dict[str, tuple[str, str]] = {
    "dashboard.js": ("dashboard.js", JAVASCRIPT),
    "dashboard.css": ("dashboard.css", CSS),
    "apikey.js": ("apikey.js", JAVASCRIPT),
    "docs.js": ("docs.js", JAVASCRIPT),
    "docs.css": ("docs.css", CSS),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", JAVASCRIPT),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", CSS),
    "swagger-ui-bundle.js": ("vendor/swagger-ui/swagger-ui-bundle.js", JAVASCRIPT),
    "swagger-ui.css": ("vendor/swagger-ui/swagger-ui.css", CSS),
}
ASSET_NAME = Param("name", "path", {"type": "string", "enum": sorted(ASSETS)}, "the file's name", True)

# The pages load only what this service serves; Swagger UI and uPlot set inline styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _text(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _page(text: str) -> web.Response:
    return web.Response(text=text, content_type=HTML, charset="utf-8", headers=SECURITY_HEADERS)


def platform_clock(settings: Settings, now: datetime | None = None) -> tuple[str, int]:
    """TLINK_TIMEZONE as set and the platform's offset from UTC now, in minutes."""
    offset = (now or datetime.now(settings.platform_zone)).astimezone(settings.platform_zone).utcoffset()
    return settings.TLINK_TIMEZONE, int(offset.total_seconds() // 60) if offset is not None else 0


def dashboard_html(settings: Settings) -> str:
    """The dashboard page with this deployment's platform clock and history limit filled in."""
    zone, offset = platform_clock(settings)
    values = {"{{TIMEZONE}}": zone, "{{OFFSET_MINUTES}}": str(offset),
              "{{HISTORY_LIMIT}}": str(settings.MAX_HISTORY_LIMIT)}  # fmt: skip
    text = _text("dashboard.html")
    for placeholder, value in values.items():
        text = text.replace(placeholder, html.escape(value, quote=True))
    return text


async def dashboard(request: web.Request) -> web.Response:
    """GET /dashboard"""
    return _page(dashboard_html(request.app[SETTINGS]))


async def api_docs(request: web.Request) -> web.Response:
    """GET /api/docs: Swagger UI over /api/openapi.json."""
    return _page(_text("docs.html"))


async def static_file(request: web.Request) -> web.StreamResponse:
    """GET /static/{name}: one of ASSETS (ETag and Last-Modified, so a reload can be a 304)."""
    asset = ASSETS.get(request.match_info["name"])
    if asset is None:
        raise ApiError(404, "no such file")
    path, content_type = asset
    headers = {"Content-Type": f"{content_type}; charset=utf-8", "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-cache"}  # fmt: skip
    return web.FileResponse(STATIC / path, headers=headers)
