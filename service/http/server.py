"""Running the application (`tlink-push serve`): TLS, listening socket, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging
import sys

from aiohttp import web

from service.config import SECRET_SETTINGS, Settings
from service.http.app import create_app
from service.http.connections import server_options
from service.http.tls import TlsError, build_ssl_context
from service.logs import describe_settings

log = logging.getLogger("tlink.server")

# Seconds in-flight requests get to finish after SIGTERM before connections are closed.
SHUTDOWN_TIMEOUT = 30.0


async def _freeze_start_up_objects(app: web.Application) -> None:
    """Move everything alive after start-up out of the garbage collector's sight.

    A full collection over the start-up objects (modules, pydantic models, the schema)
    took 30 to 50 ms, a pause every request in flight then waited for.
    """
    gc.collect()
    gc.freeze()


def run_server(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit status."""
    try:
        ssl_context = build_ssl_context(
            settings.USE_HTTPS, settings.SSL_CERT_FILE, settings.SSL_KEY_FILE,
            settings.SSL_AUTO_GENERATE, settings.TLS_CERT_DIR,
        )  # fmt: skip
    except TlsError as exc:
        print(f"tlink-push serve: {exc}", file=sys.stderr)
        return 2
    if settings.USE_HTTPS and ssl_context is None:
        log.warning("USE_HTTPS is on but there is no certificate and SSL_AUTO_GENERATE is off: serving plain HTTP")
    host = host or settings.HOST
    port = port or settings.PORT
    scheme = "https" if ssl_context else "http"
    log.info("starting: %s", describe_settings(settings.model_dump(), set(SECRET_SETTINGS)))
    app = create_app(settings)
    app.on_startup.append(_freeze_start_up_objects)
    app.on_shutdown.append(_announce_shutdown)

    def listening(_banner: str) -> None:  # run_app calls it once the socket is bound
        log.info("listening on %s://%s:%d", scheme, host, port)

    try:
        web.run_app(
            app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            access_log=logging.getLogger("aiohttp.access") if settings.ACCESS_LOG else None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            print=listening,
            **server_options(settings),
        )
    except OSError as exc:  # port taken, log root not writable, ...: one line, no traceback
        log.error("cannot serve: %s", exc)
        return 1
    log.info("stopped")
    return 0


async def _announce_shutdown(app: web.Application) -> None:
    """Runs once the listening socket is closed, before in-flight requests are awaited."""
    log.info("shutting down: no new connections, finishing requests in flight (at most %.0f s)", SHUTDOWN_TIMEOUT)
