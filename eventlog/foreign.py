"""Lines and files that are not of this service's log: what they look like, in words.

A log file whose first complete line is not an event of ours is a *foreign file*: an
old file of the original Flask service (same folder and file names, pipe-delimited
lines), or some other stray file. Start-up renames it to `<name>.foreign` next to
where it was; nothing reads such a file as log. Torn garbage is not foreign: a crash
leaves zeroed blocks (NUL bytes) or the unterminated start of one of our lines, and
that is cut off as a torn tail (`.torn`) instead (see is_torn_garbage).
"""

from __future__ import annotations

import orjson

from eventlog.events import BadLine, decode_line

LEGACY_PIPE_LINE = "a line of the original Flask service's pipe-delimited sync log"
FOREIGN_SUFFIX = ".foreign"

# Every line the store writes begins with these bytes (orjson keeps the key order).
_OUR_START = b'{"v":'
_EVENT_KEYS = ("id", "type", "receivedAt", "deviceId", "userId", "prev", "body")
_PREVIEW = 80


def describe_line(raw: bytes) -> str:
    """What a line that is not a valid event of ours looks like, for a human (one short phrase).

    `raw` is the line without its newline. The original service's pipe-delimited sync
    log is recognised by name; a valid event is described as one.
    """
    if not raw.strip():
        return "an empty line" if not raw else "a line of blanks"
    if b"\x00" in raw:
        zeros = raw.count(0)
        return f"{zeros} NUL bytes in a line of {len(raw)} (a block zeroed by a crash or power loss, or binary data)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data, not UTF-8 text ({len(raw)} bytes)"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if text.lstrip().startswith(("{", "[")):
            return f"JSON that is cut short or malformed: {_preview(text)}"
        if "|" in text:
            return f"{LEGACY_PIPE_LINE} (tlink-push import-legacy imports it): {_preview(text)}"
        return f"text that is not JSON: {_preview(text)}"
    if not isinstance(doc, dict):
        return f"JSON that is not an object ({_json_kind(doc)}): {_preview(text)}"
    missing = [key for key in _EVENT_KEYS if key not in doc]
    if missing:
        return f"a JSON object that is not an event of this service (no {', '.join(missing)}): {_preview(text)}"
    try:
        event, _ = decode_line(raw)
    except BadLine as exc:
        return f"a JSON object that is not a valid event ({exc}): {_preview(text)}"
    return f"a valid event line of device {event.device_id}"


def is_torn_garbage(raw: bytes, terminated: bool) -> bool:
    """Could the first line of a file be what a crash left of lines the store was writing?

    A crash leaves a prefix of the write (its last line without a newline) and, on some
    file systems, blocks of zeros where data never reached the disk; the write began
    with one of our lines. So torn bytes begin like our lines up to their first NUL
    byte, and a complete line without NUL bytes is never torn (the newline is the last
    byte of each line written).
    """
    zero = raw.find(0)
    if zero < 0 and terminated:
        return False
    head = raw if zero < 0 else raw[:zero]
    return head.startswith(_OUR_START) or _OUR_START.startswith(head)


def foreign_reason(raw: bytes, device_id: int, terminated: bool = True) -> str | None:
    """Why a file whose first line is `raw` is foreign to the device's log; None when it is not.

    Not foreign: a valid event of the device, or torn garbage (see is_torn_garbage).
    `terminated` False: `raw` is the whole file, with no newline at all.
    """
    if is_torn_garbage(raw, terminated):
        return None
    try:
        event, _ = decode_line(raw)
    except BadLine:
        what = describe_line(raw)
        return f"its first line is {what}" if terminated else f"it holds no complete line, only {what}"
    if event.device_id != device_id:
        return f"its first line is an event of device {event.device_id}, not of device {device_id}"
    return None


def _preview(text: str) -> str:
    cut = text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."
    return repr(cut)


def _json_kind(doc: object) -> str:
    if isinstance(doc, list):
        return "an array"
    if isinstance(doc, str):
        return "a string"
    if isinstance(doc, bool) or doc is None:
        return "a literal"
    return "a number"
