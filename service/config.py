"""Settings: typed, parsed once from the environment and `.env`."""

from __future__ import annotations

import os
import re
import socket
from datetime import UTC, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from projections.db import DatabaseUrl, parse_database_url

SECRET_SETTINGS = frozenset(
    {"SECRET_KEY", "PUSH_WEBHOOK_SECRET", "WEBHOOK_TOKEN", "API_KEYS", "TLINK_OAUTH_CLIENT_SECRET",
     "TLINK_OAUTH_PASSWORD", "DATABASE_URL", "DATABASE_PASSWORD", "BUS_URL"}
)  # fmt: skip


class SettingsError(Exception):
    """A setting has a wrong value; the message is one line naming it."""


def _csv(value: object) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ValueError("must be a comma-separated list")


class Settings(BaseSettings):
    """Every setting of the service; names are the environment variables'."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True, frozen=True
    )

    DATABASE_URL: str = "sqlite:///data/tlink.db"
    DATABASE_PASSWORD: str = ""  # a mysql URL's password, in place of the URL's (no escaping needed)
    AUTO_APPLY_SCHEMA: bool = True
    DB_POOL_SIZE: int = Field(10, ge=1, le=200)
    SECRET_KEY: str = ""
    PUSH_WEBHOOK_SECRET: str = ""
    WEBHOOK_TOKEN: str = ""
    API_KEYS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    SYNC_LOG_DIR: Path = Path("logs")
    LOG_AGE: int = Field(90, ge=1)
    HOST: str = "0.0.0.0"
    PORT: int = Field(5000, ge=1, le=65535)
    USE_HTTPS: bool = True
    SSL_CERT_FILE: Path | None = None
    SSL_KEY_FILE: Path | None = None
    SSL_AUTO_GENERATE: bool = True
    TLS_CERT_DIR: Path = Path("instance/certs")
    CORS_ALLOWED_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    DEFAULT_PAGE_SIZE: int = Field(25, ge=1)
    MAX_PAGE_SIZE: int = Field(100, ge=1)
    DEFAULT_HISTORY_LIMIT: int = Field(50, ge=0)
    MAX_HISTORY_LIMIT: int = Field(1000, ge=1)
    MAX_SAMPLES_PER_PUSH: int = Field(1000, ge=1)  # sensorsDates entries of one push; more is a 400
    MAX_SENSORS_PER_DEVICE: int = Field(1000, ge=1)  # distinct sensorsId of one device; a push past it is a 400
    MAX_BODY_BYTES: int = Field(1_048_576, ge=1024)
    MAX_BUFFERED_BODY_BYTES: int = Field(67_108_864, ge=1024)
    BODY_READ_TIMEOUT_SECONDS: float = Field(10.0, gt=0)
    HEADER_READ_TIMEOUT_SECONDS: float = Field(10.0, gt=0)
    LOG_FORMAT: Literal["text", "json"] = "text"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    ACCESS_LOG: bool = False
    TLINK_BASE_URL: str = "https://app.dtuip.com"
    TLINK_SENSOR_DATA_PATH: str = "/api/device/getDeviceSensorDatas"
    TLINK_SENSOR_HTTP_METHOD: Literal["GET", "POST"] = "GET"
    TLINK_HTTP_TIMEOUT: float = Field(10.0, gt=0)
    TLINK_APP_ID: str = ""
    TLINK_OAUTH_TOKEN_URL: str = ""
    TLINK_OAUTH_CLIENT_ID: str = ""
    TLINK_OAUTH_CLIENT_SECRET: str = ""
    TLINK_OAUTH_USERNAME: str = ""
    TLINK_OAUTH_PASSWORD: str = ""
    TLINK_OAUTH_SCOPE: str = ""
    TLINK_OAUTH_REFRESH_BUFFER: int = Field(60, ge=0)
    TLINK_SYNC_ENABLED: bool = False
    TLINK_SYNC_INTERVAL_SECONDS: int = Field(60, ge=5)
    TLINK_SYNC_PAGE_SIZE: int = Field(10, ge=1, le=100)
    TLINK_SYNC_USER_IDS: Annotated[list[int], NoDecode] = Field(default_factory=list)
    TLINK_HISTORY_PATH: str = "/api/device/getSensorHistroy"  # the vendor's spelling
    TLINK_TIMEZONE: str = ""  # the platform's clock: an IANA name (Asia/Shanghai) or +HH:MM; empty: unknown (UTC)
    BACKFILL_ENABLED: bool = False
    BACKFILL_INTERVAL_SECONDS: int = Field(900, ge=60)
    BACKFILL_LOOKBACK_DAYS: int = Field(2, ge=1, le=60)
    BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY: int = Field(40, ge=1, le=50)  # the vendor allows 50
    BACKFILL_PAGE_SIZE: int = Field(100, ge=1, le=100)
    STREAM_HEARTBEAT_SECONDS: float = Field(15.0, gt=0)  # a comment line on an idle stream this often
    STREAM_QUEUE_EVENTS: int = Field(1000, ge=1)  # events queued per stream client; a client further behind is dropped
    BUS_URL: Annotated[list[str], NoDecode] = Field(default_factory=list)  # NATS servers; empty: one node, no bus
    BUS_REPLICAS: int = Field(1, ge=1, le=5)  # JetStream replicas of the events stream and the leases
    BUS_PARTITIONS: int = Field(16, ge=1, le=1024)  # devices are split into this many partitions, one writer each
    BUS_LEASE_SECONDS: float = Field(10.0, ge=1.0, le=300.0)  # a partition's lease lapses this long after a renewal
    BUS_NAME: str = Field("tlink", pattern=r"^[A-Za-z0-9_-]{1,32}$")  # names the stream, subjects and buckets
    NODE_ID: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,64}$")  # this node's name on the bus; empty: host-pid
    NODE_ROLE: Literal["all", "ingest", "writer"] = "all"  # `tlink-push serve --role`

    @field_validator("API_KEYS", "CORS_ALLOWED_ORIGINS", "BUS_URL", mode="before")
    @classmethod
    def _split(cls, value: object) -> list[str]:
        return _csv(value)

    @field_validator("API_KEYS", mode="before")
    @classmethod
    def _some_key(cls, value: object) -> object:
        # Empty means no keys (an open read API); a value with no key in it ("," or blanks) is a mistake.
        # Defined after _split, so it runs before it (pydantic runs "before" validators last-defined first)
        # and sees the value as given.
        if isinstance(value, str | list) and len(value) > 0 and not _csv(value):
            raise ValueError("has no key in it (commas and blanks only); leave it empty for an open read API")
        return value

    @field_validator("BUS_URL")
    @classmethod
    def _bus_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"(nats|tls)://[^\s/]+(:[0-9]+)?/?", url):
                raise ValueError(f"{url!r} is not a nats:// (or tls://) server URL")
        return value

    @property
    def node_name(self) -> str:
        """NODE_ID, or host name and process id when it is unset."""
        return self.NODE_ID or f"{socket.gethostname()}-{os.getpid()}"

    @field_validator("TLINK_SYNC_USER_IDS", mode="before")
    @classmethod
    def _user_ids(cls, value: object) -> list[int]:
        ids = []
        for part in _csv(value):
            if not part.isdigit() or int(part) <= 0:
                raise ValueError(f"{part!r} is not a positive integer user id")
            ids.append(int(part))
        return ids

    @field_validator("MAX_BUFFERED_BODY_BYTES")
    @classmethod
    def _buffered(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("MAX_BODY_BYTES", 0):
            raise ValueError("must be at least MAX_BODY_BYTES")
        return value

    @field_validator("SSL_CERT_FILE", "SSL_KEY_FILE", mode="before")
    @classmethod
    def _optional_path(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        parse_database_url(value)
        return value

    @field_validator("TLINK_SENSOR_HTTP_METHOD", mode="before")
    @classmethod
    def _method(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def sync_problem(self, users: list[int] | None = None) -> str | None:
        """Why a sync of `users` (default TLINK_SYNC_USER_IDS) cannot run with these settings, or None."""
        if not (users or self.TLINK_SYNC_USER_IDS):
            return "no user to sync: set TLINK_SYNC_USER_IDS or pass --user ID"
        if not (self.TLINK_OAUTH_USERNAME and self.TLINK_OAUTH_CLIENT_ID):
            return "TLINK_OAUTH_USERNAME and TLINK_OAUTH_CLIENT_ID (and their secrets) must be set"
        return None

    @field_validator("TLINK_TIMEZONE")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone_of(value)
        return value

    @property
    def database(self) -> DatabaseUrl:
        """DATABASE_URL parsed, with DATABASE_PASSWORD (when set) as its password."""
        return parse_database_url(self.DATABASE_URL, password=self.DATABASE_PASSWORD or None)

    @property
    def platform_zone(self) -> tzinfo:
        """The platform's clock (TLINK_TIMEZONE) reading times are written in, without a zone; UTC when unset."""
        return zone_of(self.TLINK_TIMEZONE)

    @property
    def sync_configured(self) -> bool:
        """Sync has user ids and credentials to work with."""
        return self.sync_problem() is None


_OFFSET_RE = re.compile(r"[+-](0[0-9]|1[0-4]):([0-5][0-9])")


def zone_of(name: str) -> tzinfo:
    """The zone a TLINK_TIMEZONE value names: "" is UTC, "+08:00" a fixed offset, else an IANA name."""
    if not name:
        return UTC
    if match := _OFFSET_RE.fullmatch(name):
        offset = timedelta(hours=int(match.group(1)), minutes=int(match.group(2)))
        return timezone(-offset if name[0] == "-" else offset)
    try:
        return ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(f"{name!r} is neither an IANA time zone (Asia/Shanghai) nor an offset like +08:00") from None


def load_settings(**overrides: object) -> Settings:
    """Parse the settings once; a bad value raises SettingsError naming it in one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from None
