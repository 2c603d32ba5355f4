"""Asynchronous client for the TLINK vendor REST API (tlink-protocol.md section 2).

The client borrows an aiohttp ``ClientSession`` (the app's cleanup context owns and
closes it), holds one OAuth token, renews it before it runs out, and turns every
failure into a ``TlinkError`` subclass whose message never carries a secret or token.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

__all__ = [
    "MAX_PAGE_SIZE",
    "TlinkApiError",
    "TlinkAuthError",
    "TlinkBusinessError",
    "TlinkClient",
    "TlinkClientConfig",
    "TlinkConnectionError",
    "TlinkError",
    "TlinkTimeout",
]

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100  # the vendor refuses larger pages with flag "01"
SUCCESS_FLAG = "00"
# Used when a token answer omits expires_in; the vendor documents 3600 as typical.
DEFAULT_EXPIRES_IN = 3600
# Longest piece of a vendor error text we quote, so one bad answer cannot flood logs.
MAX_QUOTED_CHARS = 300
REDACTED = "***"


# --------------------------------------------------------------------------- errors


class TlinkError(Exception):
    """Root of every failure raised by this module."""


class TlinkApiError(TlinkError):
    """TLINK answered with an HTTP error status or an answer we cannot use."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TlinkAuthError(TlinkApiError):
    """No usable token: the token endpoint refused us, or the API kept answering 401."""


class TlinkBusinessError(TlinkApiError):
    """HTTP 200 whose ``flag`` is not "00": the vendor refused the request itself."""

    def __init__(self, message: str, *, flag: str, msg: str) -> None:
        super().__init__(message, status=200)
        self.flag = flag
        self.msg = msg


class TlinkTimeout(TlinkError):
    """TLINK did not answer within ``timeout_seconds``."""


class TlinkConnectionError(TlinkError):
    """TLINK could not be reached (DNS, refused connection, broken connection)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class TlinkClientConfig:
    """Everything the client needs to reach one TLINK account."""

    base_url: str
    app_id: str
    client_id: str
    # repr=False keeps secrets out of logs that print the settings object.
    client_secret: str = field(repr=False)
    username: str
    password: str = field(repr=False)
    sensor_data_path: str = "/api/device/getDeviceSensorDatas"
    history_path: str = "/api/device/getSensorHistroy"
    http_method: str = "GET"
    timeout_seconds: float = 10.0
    token_url: str = ""
    scope: str | None = None
    refresh_buffer_seconds: int = 60

    def __post_init__(self) -> None:
        method = self.http_method.upper()
        if method not in ("GET", "POST"):
            raise ValueError(f"http_method must be GET or POST, not {self.http_method!r}")
        if self.timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if self.refresh_buffer_seconds < 0:
            raise ValueError("refresh_buffer_seconds must not be negative")
        # Frozen dataclass: normalising needs object.__setattr__.
        object.__setattr__(self, "http_method", method)

    @property
    def resolved_token_url(self) -> str:
        """The token endpoint: ``token_url`` if set, else ``base_url + /oauth/token``."""
        return self.token_url or join_url(self.base_url, "/oauth/token")

    def api_url(self, path: str) -> str:
        return join_url(self.base_url, path)


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


# --------------------------------------------------------------------------- token


@dataclass(frozen=True)
class _Token:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float  # on the client's monotonic clock
    lifetime: float


# --------------------------------------------------------------------------- client


class TlinkClient:
    """TLINK REST client; safe to share between tasks of one event loop."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: TlinkClientConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_token_refresh: Callable[[str], None] | None = None,
    ) -> None:
        self._session = session
        self._config = config
        self._clock = clock
        self._on_token_refresh = on_token_refresh
        self._token: _Token | None = None
        # One lock so that tasks finding the token stale fetch one new token, not N.
        self._token_lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)

    # ----------------------------------------------------------------- public API

    async def get_device_sensor_datas(self, user_id: int, page: int, page_size: int) -> dict[str, Any]:
        """One page of ``getDeviceSensorDatas``; the answer has a ``dataList`` list and ``pages`` int."""
        check_page_size(page_size)
        if page < 1:
            raise ValueError(f"page is 1-based, got {page}")
        params = {"userId": user_id, "currPage": page, "pageSize": page_size}
        answer = await self._call_api(self._config.sensor_data_path, params)
        return check_device_page(answer, self._config.sensor_data_path)

    async def get_sensor_history(self, user_id: int, request: Mapping[str, Any]) -> dict[str, Any]:
        """One page of ``getSensorHistroy`` for ``request`` (sensorId, startDate, endDate, pagingState,
        pageSize); the answer has a ``dataList`` list and, unless it is the last page, a ``nextPage`` cursor."""
        path = self._config.history_path
        answer = await self._call_api(path, {"userId": user_id, **request})
        if not isinstance(answer.get("dataList", []), list):
            raise TlinkApiError(f"TLINK {path} answered a dataList that is not a list")
        return answer

    async def iter_devices(self, user_id: int, page_size: int) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Yield ``(page, device)`` for every device of ``user_id``, walking pages 1..pages."""
        check_page_size(page_size)
        page, pages = 1, 1
        while page <= pages:
            answer = await self.get_device_sensor_datas(user_id, page, page_size)
            # Trust the latest answer: devices added mid-walk may change the count.
            pages = answer["pages"]
            for device in answer["dataList"]:
                yield page, device
            page += 1

    # ----------------------------------------------------------------- API calls

    async def _call_api(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        access_token = await self._current_access_token()
        status, body = await self._send_api(path, params, access_token)
        if status == 401:
            # The vendor's contract: a 401 means the token is no longer good; renew, retry once.
            logger.info("TLINK %s answered 401; renewing the token and retrying once", path)
            access_token = await self._renew_after_401(access_token)
            status, body = await self._send_api(path, params, access_token)
        return self._check_api_answer(path, status, body)

    async def _send_api(self, path: str, params: Mapping[str, Any], access_token: str) -> tuple[int, Any]:
        config = self._config
        headers = {
            "Authorization": f"Bearer {access_token}",
            "tlinkAppId": config.app_id,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        # Vendor quirk: GET routes read their parameters from a JSON body, so always send one.
        request = self._session.request(
            config.http_method,
            config.api_url(path),
            data=orjson.dumps(dict(params)),
            headers=headers,
            timeout=self._timeout,
        )
        logger.debug("TLINK %s %s page=%s", config.http_method, path, params.get("currPage"))
        return await self._exchange(request, f"{config.http_method} {path}")

    async def _exchange(
        self, request: AbstractAsyncContextManager[aiohttp.ClientResponse], what: str
    ) -> tuple[int, Any]:
        """Run one HTTP exchange, mapping transport failures to TlinkTimeout/TlinkConnectionError."""
        try:
            async with request as response:
                raw = await response.read()
                return response.status, parse_json(raw)
        # TimeoutError first: aiohttp's timeout errors are also ClientErrors.
        except TimeoutError as exc:
            raise TlinkTimeout(
                f"TLINK {what} timed out after {self._config.timeout_seconds:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            detail = self._redact(f"{type(exc).__name__}: {exc}")
            raise TlinkConnectionError(f"TLINK {what} failed: {detail}") from exc

    def _check_api_answer(self, path: str, status: int, body: Any) -> dict[str, Any]:
        if status == 401:
            raise TlinkAuthError(
                f"TLINK {path} answered 401 again with a fresh token: {self._describe_error(body)}",
                status=status,
            )
        if status >= 400:
            raise TlinkApiError(
                f"TLINK {path} answered HTTP {status}: {self._describe_error(body)}", status=status
            )
        if not isinstance(body, dict):
            raise TlinkApiError(f"TLINK {path} answered HTTP {status} without a JSON object", status=status)
        self._check_flag(path, body)
        return body

    def _check_flag(self, path: str, body: Mapping[str, Any]) -> None:
        flag = str(body.get("flag"))
        if flag == SUCCESS_FLAG:
            return
        msg = self._redact(str(body.get("msg") or ""))[:MAX_QUOTED_CHARS]
        raise TlinkBusinessError(
            f"TLINK {path} refused the request: flag {flag!r}, msg {msg!r}", flag=flag, msg=msg
        )

    # ----------------------------------------------------------------- tokens

    async def _current_access_token(self) -> str:
        async with self._token_lock:
            if self._token is None:
                self._token = await self._password_grant()
            elif not self._is_fresh(self._token):
                self._token = await self._renew(self._token)
            return self._token.access_token

    async def _renew_after_401(self, rejected_access_token: str) -> str:
        async with self._token_lock:
            token = self._token
            # Another task may already have replaced the rejected token while we waited.
            if token is not None and token.access_token != rejected_access_token:
                return token.access_token
            self._token = await (self._renew(token) if token else self._password_grant())
            return self._token.access_token

    def _is_fresh(self, token: _Token) -> bool:
        # A fixed buffer longer than a short-lived token would renew on every call;
        # never ask for more than half the token's lifetime as a margin.
        margin = min(float(self._config.refresh_buffer_seconds), token.lifetime / 2)
        return self._clock() < token.expires_at - margin

    async def _renew(self, token: _Token) -> _Token:
        if token.refresh_token:
            try:
                return await self._refresh_grant(token.refresh_token)
            except TlinkAuthError as exc:
                # Refresh tokens expire or get revoked; the password grant still works then.
                # Timeouts and connection errors are not caught: a second try would fail alike.
                logger.warning("TLINK refresh_token grant failed, using the password grant: %s", exc)
        return await self._password_grant()

    async def _password_grant(self) -> _Token:
        config = self._config
        form = {"grant_type": "password", "username": config.username, "password": config.password}
        if config.scope:
            form["scope"] = config.scope
        return await self._grant("password", form)

    async def _refresh_grant(self, refresh_token: str) -> _Token:
        return await self._grant("refresh_token", {"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def _grant(self, grant: str, form: dict[str, str]) -> _Token:
        config = self._config
        started = self._clock()  # count the lifetime from before the request: errs early
        request = self._session.post(
            config.resolved_token_url,
            data=form,
            headers={
                "Authorization": basic_auth(config.client_id, config.client_secret),
                "Accept": "application/json",
            },
            timeout=self._timeout,
        )
        status, body = await self._exchange(request, f"token request ({grant} grant)")
        token = self._parse_token(grant, status, body, started)
        logger.info("TLINK token obtained with the %s grant, valid %g s", grant, token.lifetime)
        if self._on_token_refresh is not None:
            self._on_token_refresh(grant)
        return token

    def _parse_token(self, grant: str, status: int, body: Any, started: float) -> _Token:
        if status != 200 or not isinstance(body, dict):
            raise TlinkAuthError(
                f"TLINK token request ({grant} grant) was refused with HTTP {status}: "
                f"{self._describe_error(body)}",
                status=status,
            )
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TlinkAuthError(f"TLINK token answer ({grant} grant) has no access_token", status=status)
        lifetime = parse_expires_in(body.get("expires_in"))
        refresh_token = body.get("refresh_token")
        return _Token(
            access_token=access_token,
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            expires_at=started + lifetime,
            lifetime=lifetime,
        )

    # ----------------------------------------------------------------- messages

    def _describe_error(self, body: Any) -> str:
        """A short, redacted description of a Spring Boot or OAuth error body."""
        if not isinstance(body, dict):
            return "no JSON error body"
        parts = [
            str(body[key])
            for key in ("error", "message", "error_description", "msg")
            if body.get(key) not in (None, "")
        ]
        text = ": ".join(parts) or "no error details"
        return self._redact(text)[:MAX_QUOTED_CHARS]

    def _redact(self, text: str) -> str:
        """Blank out every secret we hold, in case a vendor text echoes one back."""
        for secret in self._secrets():
            text = text.replace(secret, REDACTED)
        return text

    def _secrets(self) -> list[str]:
        config, token = self._config, self._token
        secrets = [config.client_secret, config.password]
        if token is not None:
            secrets += [token.access_token, token.refresh_token or ""]
        return [secret for secret in secrets if secret]


# --------------------------------------------------------------------------- helpers


def check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")


def check_device_page(answer: dict[str, Any], path: str) -> dict[str, Any]:
    """Refuse an answer the sync could not walk: ``dataList`` of objects and an int ``pages``."""
    data_list = answer.get("dataList")
    pages = answer.get("pages")
    if not isinstance(data_list, list) or not all(isinstance(item, dict) for item in data_list):
        raise TlinkApiError(f"TLINK {path} answer has no dataList list of objects", status=200)
    # bool is an int subclass; True pages would be nonsense.
    if not isinstance(pages, int) or isinstance(pages, bool) or pages < 0:
        raise TlinkApiError(f"TLINK {path} answer has no valid pages count", status=200)
    return answer


def basic_auth(login: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value (aiohttp's BasicAuth is deprecated in 3.14)."""
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


def parse_json(raw: bytes) -> Any:
    """The decoded body, or None when it is empty or not JSON (a proxy's HTML page, say)."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def parse_expires_in(value: Any) -> float:
    try:
        lifetime = float(value)
    except (TypeError, ValueError):
        return float(DEFAULT_EXPIRES_IN)
    return lifetime if lifetime > 0 else float(DEFAULT_EXPIRES_IN)
