"""The answers of the HTTP API as pydantic models: handlers build answers through them and
the OpenAPI document is generated from them, so the two cannot drift apart."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from projections.readings import MAX_FLAG_CHARS, MAX_ID, MAX_PARENT_USER_ID_CHARS, MAX_UNIT_CHARS, MAX_VALUE_CHARS
from service.config import Settings
from service.http.body import MAX_INTEGER, MIN_INTEGER
from service.http.query import CLOCK_PATTERN, TIME_PATTERN

PlatformTime = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}([+-]\d{2}:\d{2}(:\d{2})?)?$",
        description="TLINK platform time, ISO 8601: without a zone, as the vendor gives it, when TLINK_TIMEZONE is"
        " unset; with the platform zone's UTC offset at that time when it is set (+08:00; an IANA zone's offset"
        " before standard time may have seconds, +08:05:43)",
        examples=["2019-05-10T14:16:21", "2019-05-10T14:16:21+08:00"],
    ),
]
Cursor = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$",
        description="a reading time as the `before` parameter takes it: platform time without a zone",
        examples=["2019-05-10T14:16:21"],
    ),
]
Instant = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$",
        description="UTC instant, ISO 8601 with Z",
        examples=["2026-11-28T00:35:17.944Z"],
    ),
]


class Answer(BaseModel):
    """Base of every answer model: unknown fields are an error, so the document is complete."""

    model_config = ConfigDict(extra="forbid")


class ErrorAnswer(Answer):
    """Every error: what is wrong, naming the parameter or field."""

    error: str = Field(examples=["page must be an integer, got 'x'"])


class User(Answer):
    """A TLINK user."""

    userId: int = Field(description="TLINK user id (deviceUserid of pushes)")
    parentUserId: str | None = Field(description="the enterprise/tenant above the user")


class DeviceSummary(Answer):
    """A device: its last push and what the last sync said about it."""

    deviceId: int
    userId: int = Field(description="TLINK user id of the owner")
    parentUserId: str | None
    deviceName: str | None
    deviceNo: str | None
    groupId: int | None
    lat: str | None
    lng: str | None
    lastFlag: str | None = Field(description="flag of the last push ('00' is a normal upload)")
    lastPushTime: PlatformTime | None = Field(description="`time` of the last push")


class ReadingOut(Answer):
    """One reading of one sensor."""

    recordedAt: PlatformTime = Field(description="reading time (platform time)")
    sensorTimestamp: str | None = Field(description="TLINK's own time string of the reading")
    value: str | None = Field(description="TLINK `value` (scaled)")
    rawValue: str | None = Field(description="TLINK `reVal` (raw)")
    isAlarm: bool | None
    isLine: bool | None


class SensorSummary(Answer):
    """A sensor and its latest value (the newest reading time, not the last received)."""

    sensorId: int
    deviceId: int
    sensorName: str | None
    sensorTypeId: int | None
    unit: str | None
    isAlarm: bool | None
    isLine: bool | None
    latestValue: str | None
    latestRecordedAt: PlatformTime | None


class SensorWithHistory(SensorSummary):
    """A sensor with its readings in the window, newest first, at most historyLimit."""

    history: list[ReadingOut]
    next: Cursor | None = Field(
        description="pass as `before` (with the same other parameters) for the next older page: the reading time of"
        " the oldest reading shown; null when the window holds nothing older (and with historyLimit=0)"
    )


class SensorWithLatest(SensorSummary):
    """A sensor with its latest reading."""

    latest: ReadingOut | None


class DeviceWithSensors(DeviceSummary):
    """A device with its sensors and their history."""

    sensors: list[SensorWithHistory]


class Pagination(Answer):
    """Where a page stands."""

    page: int = Field(ge=1)
    pageSize: int = Field(ge=1)
    total: int = Field(ge=0)
    pages: int = Field(ge=0)


class DevicesAnswer(Answer):
    """GET /api/users/{userId}/devices"""

    user: User
    pagination: Pagination
    devices: list[DeviceWithSensors]


class LatestAnswer(Answer):
    """GET /api/users/{userId}/devices/{deviceId}/latest"""

    user: User
    device: DeviceSummary
    sensors: list[SensorWithLatest]


class HistoryAnswer(Answer):
    """GET /api/users/{userId}/devices/{deviceId}/history"""

    user: User
    device: DeviceSummary
    sensors: list[SensorWithHistory]


class GapOut(Answer):
    """Readings missing between two consecutive readings of a sensor."""

    start: PlatformTime = Field(description="first second of the gap: just after the reading before it")
    end: PlatformTime = Field(description="last second of the gap: just before the reading after it")
    missing: int = Field(ge=1, description="readings the sensor's cadence says should be there")
    askedVendor: bool = Field(
        description="the vendor's history was asked for this window to its last page: it has nothing more there"
    )


class Quota(Answer):
    """The sensor's getSensorHistroy calls on the current UTC day."""

    day: str = Field(description="the UTC day the vendor's quota counts")
    spent: int = Field(ge=0)
    limit: int = Field(ge=1, description="BACKFILL_MAX_CALLS_PER_SENSOR_PER_DAY")
    refused: bool = Field(description="the vendor refused a call today (flag 01): no more until the next UTC day")


class ReadingsByOrigin(Answer):
    """Readings of the day by the event that brought them."""

    push: int = Field(ge=0)
    sync: int = Field(ge=0)
    backfill: int = Field(ge=0)
    legacy: int = Field(ge=0, description="imported from the original Flask service (tlink-push import-legacy)")


class SensorCoverageOut(Answer):
    """How complete one sensor's readings are on the day."""

    sensorId: int
    sensorName: str | None
    cadenceSeconds: float | None = Field(
        description="median interval between consecutive readings over BACKFILL_LOOKBACK_DAYS up to the day's end;"
        " null under 10 readings (no cadence, no gaps)"
    )
    readings: ReadingsByOrigin
    gaps: list[GapOut] = Field(description="gaps overlapping the day, oldest first")
    openGaps: int = Field(ge=0, description="gaps the vendor has not been asked for to the last page")
    missing: int = Field(ge=0, description="estimated readings missing in the open gaps")
    coverage: float | None = Field(
        ge=0, le=1, description="readings of the day / (those + missing); null when nothing is expected"
    )
    quota: Quota


class CoverageAnswer(Answer):
    """GET /api/users/{userId}/devices/{deviceId}/coverage"""

    user: User
    device: DeviceSummary
    day: str = Field(description="the day (platform time)")
    sensors: list[SensorCoverageOut]


class LoggedEvent(BaseModel):
    """One log line as it stands in the file (more fields may appear), with where it stands."""

    model_config = ConfigDict(extra="allow")

    v: int = Field(description="line format version")
    id: str = Field(description="event id (UUIDv7)")
    type: str = Field(description="push, sync or sync_failed")
    receivedAt: Instant
    deviceId: int
    userId: int
    prev: str = Field(description="hex SHA-256 of the previous line of this device's log")
    body: dict[str, Any] = Field(description="the JSON received, unchanged")
    file: str = Field(description="name of the daily log file")
    line: int = Field(ge=1, description="1-based line number in that file")


class UnreadableLine(Answer):
    """A line that is not a JSON object (it fails `tlink-push verify`)."""

    file: str
    line: int = Field(ge=1)
    raw: str
    error: str


class EventsPagination(Answer):
    """Where a page of events stands (counting every event would mean reading the whole log)."""

    page: int = Field(ge=1)
    pageSize: int = Field(ge=1)
    hasMore: bool


class EventsAnswer(Answer):
    """GET /api/users/{userId}/devices/{deviceId}/events"""

    user: User
    device: DeviceSummary
    pagination: EventsPagination
    events: list[LoggedEvent | UnreadableLine]


class VendorApi(Answer):
    """A TLINK REST endpoint (vendor documentation)."""

    endpoint: str
    method: str
    summary: str
    keyFields: list[str]


class ReferenceAnswer(Answer):
    """GET /api/reference/device-apis"""

    count: int
    reference: list[VendorApi]


class HealthAnswer(Answer):
    """GET /api/health: the process answers."""

    status: Literal["ok"]


class Check(Answer):
    """One readiness check."""

    ok: bool
    detail: str | None = None


class StoppedDevice(Answer):
    """A device whose projection stopped at a line that cannot be applied; the others go on."""

    deviceId: int
    file: str = Field(description="the log file, relative to the log root")
    line: int = Field(description="1-based line number in that file")
    eventId: str | None = Field(description="the event on that line (null when the line is not an event)")
    reason: str


class ProjectionCheck(Answer):
    """How far the read models are behind the log."""

    ok: bool
    behindDevices: int = Field(description="devices whose log is ahead of the read models")
    queuedEvents: int = Field(description="appended events waiting to be projected")
    failed: str | None = Field(description="why the projector stopped, if it did")
    stoppedDevices: list[StoppedDevice] = Field(
        default_factory=list,
        description="devices whose projection stopped at a line it cannot apply (readiness is not affected:"
        " every other device goes on; alert on tlink_projection_stopped_devices)",
    )


class PartitionLag(Answer):
    """A partition of the devices that this node writes."""

    partition: int
    lag: int | None = Field(description="its messages on the bus not yet written (null: the bus did not answer)")


class BusCheck(Answer):
    """Cluster mode (BUS_URL): this node's connection to the bus and the partitions it writes."""

    ok: bool = Field(description="connected to a NATS server")
    nodeId: str
    role: Literal["all", "ingest", "writer"]
    server: str | None = Field(description="the NATS server the connection is on")
    liveNodes: int = Field(description="nodes that announced themselves within the lease time")
    partitions: list[PartitionLag] = Field(description="the partitions whose lease this node holds, and their lag")


class ReadyChecks(Answer):
    """Every readiness check."""

    logRoot: Check
    database: Check
    projection: ProjectionCheck
    bus: BusCheck | None = Field(None, description="only in cluster mode (BUS_URL)")


class ReadyAnswer(Answer):
    """GET /api/ready: 200 when ready, 503 with the reasons when not."""

    status: Literal["ready", "not ready"]
    reasons: list[str]
    checks: ReadyChecks


class WebhookAnswer(Answer):
    """POST /api/webhooks/tlink"""

    status: Literal["ok"]
    storedReadings: int = Field(ge=0)
    eventId: str | None
    duplicate: bool
    projected: bool = Field(description="the read models already reflect the push")


# Any JSON value the webhook keeps as received (its unknown fields): integers within what
# orjson keeps as integers (service/http/body.py), everything else as JSON has it.
JSON_VALUE_REF: dict[str, Any] = {"$ref": "#/components/schemas/JsonValue"}
ANY_JSON_MARK: dict[str, Any] = {"x-any-json": True}  # service/http/openapi.py puts JSON_VALUE_REF where this is
JSON_VALUE: dict[str, Any] = {
    "description": "any JSON value; integers from -2**63 to 2**64-1",
    "anyOf": [
        {"type": "string"}, {"type": "boolean"}, {"type": "null"},
        {"type": "integer", "minimum": MIN_INTEGER, "maximum": MAX_INTEGER},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": JSON_VALUE_REF},
        {"type": "object", "additionalProperties": JSON_VALUE_REF},
    ],
}  # fmt: skip
_FLAG = '"1"/1: yes, "0"/0: no, anything else: unknown'
_KEPT = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": ANY_JSON_MARK})

# What a push may carry, as the webhook checks it (projections/readings.py's limits): ids are
# JSON integers 1..MAX_ID or short digit strings, times real platform times.
PushId = Annotated[int, Field(ge=1, le=MAX_ID)] | Annotated[str, Field(pattern=r"^[1-9][0-9]{0,17}$")]
PushText = Annotated[str, Field(max_length=MAX_VALUE_CHARS)] | float | int
_MAX_SAMPLES = Settings.model_fields["MAX_SAMPLES_PER_PUSH"].default  # the default of the setting


class PushSensor(BaseModel):
    """One `sensorsDates` entry of a push (vendor fields; unknown ones are kept)."""

    model_config = _KEPT

    sensorsId: PushId
    sensorsTypeId: int | Annotated[str, Field(pattern=r"^(-?[0-9]{1,18})?$")] | None = None
    times: str | None = Field(
        None, pattern=f"^({CLOCK_PATTERN})?$", description="HH:MM:SS; empty or absent: the body's `time`"
    )
    value: PushText | None = None
    reVal: PushText | None = None
    isAlarm: Any = Field(None, description=_FLAG, json_schema_extra=ANY_JSON_MARK)
    isLine: Any = Field(None, description=_FLAG, json_schema_extra=ANY_JSON_MARK)
    unit: Annotated[str, Field(max_length=MAX_UNIT_CHARS)] | float | int | None = None


class PushBody(BaseModel):
    """A TLINK push body (vendor fields; unknown ones are kept unchanged)."""

    model_config = _KEPT

    deviceId: PushId
    deviceUserid: PushId
    sensorsDates: list[PushSensor] = Field(
        max_length=_MAX_SAMPLES, description=f"at most MAX_SAMPLES_PER_PUSH ({_MAX_SAMPLES}) samples"
    )
    time: str = Field(pattern=TIME_PATTERN, description="YYYY-MM-DD HH:MM:SS, platform time")
    flag: Annotated[str, Field(max_length=MAX_FLAG_CHARS)] | int | None = None
    parentUserId: Annotated[str, Field(max_length=MAX_PARENT_USER_ID_CHARS)] | int | None = None
    rawData: Any = Field(None, description="kept as sent, any JSON", json_schema_extra=ANY_JSON_MARK)
