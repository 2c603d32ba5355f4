"""Process-wide logging as text or JSON lines, and masking of secrets in logs."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "****"
FORMATS = ("text", "json")
ACCESS_LOGGER = "aiohttp.access"
SCHEDULER_LOGGER = "apscheduler"

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}
_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "key")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler setup_logging installs; a second call finds it by type."""


def setup_logging(
    fmt: str = "text", level: str = "INFO", access_log: bool = False
) -> None:
    """Send all logging to stderr as text or JSON lines; safe to call more than once."""
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown log format {fmt!r} (expected one of: {', '.join(FORMATS)})"
        )
    numeric = _level(level)
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # aiohttp logs every request at INFO; it halves throughput, so it is opt-in.
    logging.getLogger(ACCESS_LOGGER).setLevel(
        logging.INFO if access_log else logging.WARNING
    )
    # APScheduler logs two INFO lines per job run; the jobs log their own summary line.
    chatty = numeric <= logging.DEBUG
    logging.getLogger(SCHEDULER_LOGGER).setLevel(numeric if chatty else max(numeric, logging.WARNING))


def _level(name: str) -> int:
    """The numeric level for a name such as "info" or "DEBUG"."""
    try:
        return logging.getLevelNamesMapping()[name.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}") from None


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields that were passed to the logging call through `extra=`."""
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _RECORD_FIELDS and not k.startswith("_")
    }


def utc_timestamp(created: float) -> str:
    """An epoch time as ISO 8601 UTC with milliseconds and a Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger> <message> key=value ...`, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a text line."""
        parts = [
            utc_timestamp(record.created),
            record.levelname,
            record.name,
            record.getMessage(),
        ]
        parts += [
            f"{key}={_text_value(value)}" for key, value in extra_fields(record).items()
        ]
        line = " ".join(parts)
        problem = self._problem(record)
        return f"{line}\n{problem}" if problem else line

    def _problem(self, record: logging.LogRecord) -> str:
        """The formatted exception and stack, if the record carries any."""
        chunks = []
        if record.exc_info:
            chunks.append(self.formatException(record.exc_info))
        if record.stack_info:
            chunks.append(self.formatStack(record.stack_info))
        return "\n".join(chunks)


class JsonFormatter(TextFormatter):
    """One JSON object per line: ts, level, logger, msg, extras, exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON line."""
        payload: dict[str, object] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            # An extra never overwrites a core field; it is kept under a suffixed name.
            payload[key if key not in payload else f"{key}_"] = value
        problem = self._problem(record)
        if problem:
            payload["exc"] = problem
        return json.dumps(payload, ensure_ascii=False, default=str)


def _text_value(value: object) -> str:
    """A value for a key=value pair, quoted when it would otherwise be ambiguous."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in '"=\\' for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def mask_secret(value: str | None) -> str:
    """Hide a secret: "" stays "", a URL loses only its password, else ****."""
    if not value:
        return ""
    if "://" in value:
        masked = _mask_url(value)
        if masked is not None:
            return masked
    return MASK


def _mask_url(value: str) -> str | None:
    """The URL with password and secret query values masked; None if unparsable."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if not parts.scheme:
        return None
    masked = value
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        if colon:
            masked = masked.replace(parts.netloc, f"{user}:{MASK}@{hostport}", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(_secret_key(k) for k, _ in pairs):
        query = urlencode(
            [(k, MASK if _secret_key(k) else v) for k, v in pairs], safe="*"
        )
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    # Edited in place rather than via urlunsplit, which rewrites sqlite:/// as sqlite:/.
    return masked


def _secret_key(name: str) -> bool:
    """True for query parameter names that usually carry a credential."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_QUERY_KEYS)


def describe_settings(pairs: Mapping[str, object], secret_names: set[str]) -> str:
    """One line `NAME=value ...` of the settings, the named secrets masked."""
    secret = {name.lower() for name in secret_names}
    return " ".join(
        f"{name}={_setting_value(value, name.lower() in secret)}"
        for name, value in pairs.items()
    )


def _setting_value(value: object, is_secret: bool) -> str:
    """How one setting appears in describe_settings."""
    reveal = getattr(value, "get_secret_value", None)  # pydantic SecretStr and friends
    if callable(reveal):
        value = reveal()
    if isinstance(value, (list, tuple, set, frozenset)):
        if not value:
            return ""
        return MASK if is_secret else _text_value(",".join(str(item) for item in value))
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return _text_value(mask_secret(text) if is_secret else text) if text else ""
