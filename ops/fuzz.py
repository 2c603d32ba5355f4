"""Fuzzing the live service: schemathesis over the OpenAPI document, hypothesis over the webhook.

Runs the real `tlink-push serve` (plain HTTP, its own temporary working folder, a free port,
SQLite by default) and checks that no input gets a 5xx and none is silently mis-accepted.

1. schemathesis (`st run`, every operation, `--checks all`) against `/api/openapi.json`,
   once without `API_KEYS` and once with a key (sent as `Authorization: Bearer`); the
   webhook is open in these two runs so its body schema is fuzzed too.
2. a hypothesis fuzzer of `POST /api/webhooks/tlink` (WEBHOOK_TOKEN and PUSH_WEBHOOK_SECRET
   set) that mutates tests/fixtures/sample_push.json: field types, unicode and non-ASCII
   digits in ids, deep nesting, sizes near MAX_BODY_BYTES, duplicate keys written into the
   raw text, numbers at and past the limits, invalid UTF-8, gzip bodies that are not, and
   wrong tokens and signatures. Every body goes out as raw bytes. The oracle of each case:

   - the status is below 500 and the answer is JSON;
   - 200, not a duplicate: the body is strict JSON (UTF-8, no duplicate keys, no NaN, no lone
     surrogates), the README's limits allow it, and the returned eventId's line is in
     logs/<deviceId>/device<deviceId>-<UTC day>.log with `body` equal to the value sent
     (every number compared exactly, as a decimal, and ints stay ints);
   - 200, duplicate: the original event's stored body equals the value sent;
   - 4xx: `{"error": "..."}`; an authenticated body (right token and signature) rejected
     with 400 has a dead-letter line in rejected/rejected-<day>.log whose body is the bytes
     sent; an unauthenticated one is 401 (413 if too large) and is not dead-lettered;
   - at the end: the log holds exactly the accepted events, and `tlink-push verify` passes.

`python -m ops.fuzz [--webhook-cases N] [--schemathesis-cases N] [--seed S] [--out DIR]`
prints a table, writes ops/results/fuzz-<UTC>.json and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from ops.bench_common import BIN, PROJECT, RESULTS, code_version, free_port, machine_facts, table
from ops.crash_cycles import Service

FIXTURE = PROJECT / "tests" / "fixtures" / "sample_push.json"
TOKEN = "fuzz-token"
SECRET = "fuzz-secret"
API_KEY = "fuzz-api-key"
MAX_BODY_BYTES = 65_536  # small, so that bodies near the limit are cheap to send
MAX_ID = 2**63 - 1
LIMITS = {"parentUserId": 64, "flag": 16}
SAMPLE_LIMITS = {"unit": 64, "value": 1024, "reVal": 1024}
EXAMPLES_KEPT = 3  # reproducing inputs kept per kind of failure
ASCII_INT = re.compile(r"[0-9]+")
SIGNED_ASCII_INT = re.compile(r"-?[0-9]+")
TIME_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}")
CLOCK_TEXT = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}")
LOG_FILE = re.compile(r"([0-9]+)/device\1-([0-9]{4}-[0-9]{2}-[0-9]{2})\.log")  # relative to the log root

sys.set_int_max_str_digits(0)
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # the reference parser reads deep nesting


# ---------------------------------------------------------------- strict JSON, exact values


class NotStrictJson(ValueError):
    """The bytes are not strict RFC 8259 JSON, or say something no JSON parser can keep as sent."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise NotStrictJson(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def _constant(name: str) -> Any:
    raise NotStrictJson(f"{name} is not JSON")


def _no_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= c <= "\udfff" for c in item):
                raise NotStrictJson("lone surrogate in a string")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strict_loads(raw: bytes) -> Any:
    """The JSON value of `raw`, numbers exact (ints as int, the rest as Decimal); NotStrictJson if it has none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotStrictJson(f"not UTF-8: {exc}") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_float=Decimal, parse_constant=_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise NotStrictJson(f"invalid JSON: {exc}") from None
    _no_surrogates(value)
    return value


def same_value(sent: Any, stored: Any, path: str = "$") -> str | None:
    """None if `stored` is exactly `sent` (types, keys, every number); else where and how they differ."""
    stack = [(sent, stored, path)]
    while stack:
        a, b, where = stack.pop()
        if isinstance(a, bool) or isinstance(b, bool):
            if a is not b:
                return f"{where}: sent {a!r}, stored {b!r}"
        elif isinstance(a, int) and isinstance(b, int):
            if a != b:
                return f"{where}: sent {a}, stored {b}"
        elif isinstance(a, Decimal) and isinstance(b, Decimal):
            if a != b:
                return f"{where}: sent {a}, stored {b}"
        elif isinstance(a, dict) and isinstance(b, dict):
            if list(a) != list(b) and set(a) != set(b):
                return f"{where}: sent keys {sorted(a)[:10]}, stored keys {sorted(b)[:10]}"
            stack.extend((a[k], b[k], f"{where}.{k}") for k in a)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return f"{where}: sent {len(a)} items, stored {len(b)}"
            stack.extend((x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)))
        elif type(a) is not type(b) or a != b:
            return f"{where}: sent {_short(a)} ({type(a).__name__}), stored {_short(b)} ({type(b).__name__})"
    return None


def _short(value: Any, chars: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= chars else text[:chars] + f"... ({len(text)} chars)"


# ---------------------------------------------------------------- what the README says must be refused


def _id_problem(
    name: str, value: Any, low: int = 1, high: int = MAX_ID, pattern: re.Pattern[str] = ASCII_INT
) -> str | None:
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)  # 5001.0 or 5e3: JSON's integer written as a float (README: Webhook)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return f"{name} is {type(value).__name__}"
    if isinstance(value, str):
        if not pattern.fullmatch(value):
            return f"{name} {value!r} is not a string of ASCII digits"
        value = int(value)
    if not low <= value <= high:
        return f"{name} {value} outside {low}..{high}"
    return None


def _text_problem(name: str, value: Any, chars: int, numbers: type | tuple[type, ...]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(
        value, (str, *numbers) if isinstance(numbers, tuple) else (str, numbers)
    ):
        return f"{name} is {type(value).__name__}"
    if len(value if isinstance(value, str) else str(value)) > chars:
        return f"{name} longer than {chars} characters"
    return None


def _time_problem(name: str, value: Any, pattern: re.Pattern[str], fmt: str) -> str | None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return f"{name} {_short(value, 40)} is not {fmt}"
    try:
        parsed = datetime.strptime(value.replace("T", " "), fmt.replace("YYYY", "%Y").replace("MM-DD", "%m-%d")
                                   .replace("HH", "%H").replace("MM", "%M").replace("SS", "%S"))  # fmt: skip
    except ValueError:
        return f"{name} {value!r} is not a real {fmt}"
    if fmt.startswith("YYYY") and not 1000 <= parsed.year <= 9999:
        return f"{name} {value!r}: year outside 1000..9999"
    return None


def readme_problem(body: Any) -> str | None:
    """Why the README's webhook section says this body must be answered 400, or None (a rough, partial check)."""
    if not isinstance(body, dict):
        return "not an object"
    for name in ("deviceId", "deviceUserid"):
        if name not in body:
            return f"{name} missing"
        if problem := _id_problem(name, body[name]):
            return problem
    if problem := _time_problem("time", body.get("time"), TIME_TEXT, "YYYY-MM-DD HH:MM:SS"):
        return problem
    for name, chars in LIMITS.items():
        if problem := _text_problem(name, body.get(name), chars, int):
            return problem
    samples = body.get("sensorsDates")
    if not isinstance(samples, list):
        return "sensorsDates is not a list"
    for i, sample in enumerate(samples):
        where = f"sensorsDates[{i}]"
        if not isinstance(sample, dict):
            return f"{where} is not an object"
        if problem := _id_problem(f"{where}.sensorsId", sample.get("sensorsId")):
            return problem
        kind = sample.get("sensorsTypeId")
        if kind not in (None, "") and (
            problem := _id_problem(f"{where}.sensorsTypeId", kind, -MAX_ID, MAX_ID, SIGNED_ASCII_INT)
        ):
            return problem
        for name, chars in SAMPLE_LIMITS.items():
            if problem := _text_problem(f"{where}.{name}", sample.get(name), chars, (int, Decimal)):
                return problem
        if "times" in sample and sample["times"] not in (None, ""):  # empty or absent: the body's `time`
            if problem := _time_problem(f"{where}.times", sample["times"], CLOCK_TEXT, "HH:MM:SS"):
                return problem
    return None


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """One request to the webhook."""

    raw: bytes  # what goes on the wire
    handler_body: bytes  # what the handler reads (raw, or raw decompressed)
    mutations: list[str]
    fields: set[str] = field(default_factory=set)  # field names a value mutation touched
    token: str | None = TOKEN
    signature: str | None = None  # None: the right one over handler_body
    headers: dict[str, str] = field(default_factory=dict)
    authenticated: bool = True  # the right token, and the right signature over handler_body
    broken_encoding: bool = False  # a Content-Encoding the body does not have: any JSON 4xx, or read as is
    structural: bool = False  # deep nesting, many samples or a body near the size limit

    def describe(self, chars: int = 600) -> dict[str, Any]:
        raw = self.raw
        try:
            shown: Any = raw.decode("utf-8")
            if len(shown) > chars:
                shown = shown[:chars] + f"... ({len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]})"
        except UnicodeDecodeError:
            shown = {"base64": base64.b64encode(raw[:chars]).decode(), "bytes": len(raw)}
        return {"mutations": self.mutations, "body": shown, "token": self.token, "signature": self.signature,
                "headers": self.headers, "authenticated": self.authenticated}  # fmt: skip


def sample_push() -> dict[str, Any]:
    return dict(json.loads(FIXTURE.read_text()))


NON_ASCII_DIGITS = "٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹०१२३४५६७८९０１２３４５６７８９𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗"
NUMBER_TOKENS = [
    "0", "-0", "1", "-1", "0.0", "-0.0", "1.0", "1e0", "1E2", "1e-2", "9223372036854775807", "9223372036854775808",
    "-9223372036854775807", "-9223372036854775808", "-9223372036854775809", "18446744073709551615",
    "18446744073709551616", "123456789012345678901234567890", "1" + "0" * 400, "1e308", "1.7976931348623157e308",
    "1.8e308", "1e400", "-1e400", "5e-324", "2e-324", "1e-400", "0.1000000000000000000001", "9007199254740993",
    "9007199254740993.0", "2.5", "1.5e3", "0.30000000000000004", "1.00000000000000000001", "123456789012345678.5",
    "2.2250738585072011e-308", "1e-7", "1E+2", "0.1e1", "0.10000000000000000555", "-9.2233720368547758e18",
]  # fmt: skip
BAD_NUMBER_TOKENS = ["NaN", "Infinity", "-Infinity", "01", "+1", ".5", "1.", "0x10", "1e", "--1", "1_000"]
INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                b"\x80", b"\xe2\x82", b"\xf0\x9f\x98"]  # fmt: skip

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)  # fmt: skip
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)  # fmt: skip

id_texts = st.one_of(
    st.text(alphabet=NON_ASCII_DIGITS, min_size=1, max_size=6),
    st.builds(lambda a, b: a + b, st.sampled_from(["", " ", "+", "-", "0", "\u00a0", "\t"]),
              st.sampled_from(["2864", "385", "11922", "0", "9223372036854775807", "9223372036854775808"])),
    st.builds(lambda a, b: a + b, st.sampled_from(["2864", "385", "1"]),
              st.sampled_from(["", " ", "\n", "\x00", ".0", "e3", "\u0663", "\u200b"])),
    st.sampled_from(["", "0x10", "1e3", "12_3", "١٢", "2864.0", "²", "⑤", "Ⅻ"]),
)  # fmt: skip

PATHS = [("deviceId",), ("deviceUserid",), ("time",), ("flag",), ("parentUserId",), ("rawData",), ("sensorsDates",),
         ("sensorsDates", 0), ("sensorsDates", 0, "sensorsId"), ("sensorsDates", 0, "times"),
         ("sensorsDates", 1, "sensorsTypeId"), ("sensorsDates", 1, "value"), ("sensorsDates", 2, "reVal"),
         ("sensorsDates", 2, "unit"), ("sensorsDates", 0, "isAlarm"), ("sensorsDates", 1, "isLine")]  # fmt: skip
ID_PATHS = [("deviceId",), ("deviceUserid",), ("sensorsDates", 0, "sensorsId"), ("sensorsDates", 1, "sensorsTypeId")]
TEXT_PATHS = [("flag",), ("parentUserId",), ("sensorsDates", 1, "value"), ("sensorsDates", 2, "reVal"),
              ("sensorsDates", 2, "unit"), ("time",), ("sensorsDates", 0, "times"), ("newField",)]  # fmt: skip


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> bool:
    """Set the value at `path`; False if an earlier change removed the path."""
    try:
        for step in path[:-1]:
            doc = doc[step]
        doc[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _delete(doc: Any, path: tuple[Any, ...]) -> None:
    for step in path[:-1]:
        doc = doc[step]
    del doc[path[-1]]


def _names(path: tuple[Any, ...]) -> set[str]:
    return {str(step) for step in path if isinstance(step, str)}


RAW_NUMBER = "\x00raw\x00"  # placeholder string replaced by raw JSON text (a number, deep nesting)


@st.composite
def value_mutations(draw: st.DrawFn) -> tuple[dict[str, Any], list[str], set[str], list[str]]:
    """The fixture with a few value-level changes; numbers meant to keep their exact text are placeholders."""
    doc = sample_push()
    doc["sensorsDates"] = [dict(s) for s in doc["sensorsDates"]]
    notes: list[str] = []
    fields: set[str] = set()
    tokens: list[str] = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 2, 3, 4]))):
        kind = draw(st.sampled_from(["type", "id_text", "number", "unicode", "delete", "nesting", "many", "big"]))
        if kind == "type":
            path = draw(st.sampled_from(PATHS))
            value = draw(json_values)
            if not _set(doc, path, value):
                continue
            notes.append(f"{'.'.join(map(str, path))} = {_short(value, 60)}")
        elif kind == "id_text":
            path = draw(st.sampled_from(ID_PATHS))
            value = draw(id_texts)
            if not _set(doc, path, value):
                continue
            notes.append(f"{'.'.join(map(str, path))} = {value!r}")
        elif kind == "number":
            path = draw(st.sampled_from(ID_PATHS + TEXT_PATHS))
            token = draw(st.sampled_from(NUMBER_TOKENS + BAD_NUMBER_TOKENS))
            if not _set(doc, path, f"{RAW_NUMBER}{len(tokens)}"):
                continue
            tokens.append(token)
            notes.append(f"{'.'.join(map(str, path))} = raw {token[:40]}")
        elif kind == "unicode":
            path = draw(st.sampled_from(TEXT_PATHS))
            value = draw(st.text(max_size=draw(st.sampled_from([5, 20, 70, 1100]))))
            if not _set(doc, path, value):
                continue
            notes.append(f"{'.'.join(map(str, path))} = unicode {_short(value, 40)}")
        elif kind == "delete":
            path = draw(st.sampled_from([p for p in PATHS if len(p) != 2]))
            with suppress(KeyError, IndexError, TypeError):
                _delete(doc, path)
                notes.append(f"delete {'.'.join(map(str, path))}")
        elif kind == "nesting":
            depth = draw(st.sampled_from([2, 50, 500, 1000, 1023, 1024, 1025, 2000, 5000]))
            opener = draw(st.sampled_from(["list", "object"]))
            inner = json.dumps(draw(json_scalars))
            nested = "[" * depth + inner + "]" * depth if opener == "list" else '{"a":' * depth + inner + "}" * depth
            doc[draw(st.sampled_from(["extra", "rawData"]))] = f"{RAW_NUMBER}{len(tokens)}"
            tokens.append(nested)
            notes.append(f"nesting {opener} depth {depth}")
            path = ()
        elif kind == "many":
            count = draw(st.sampled_from([0, 1, 100, 1000, 3000]))
            samples = doc.get("sensorsDates")
            base = samples[0] if isinstance(samples, list) and samples else {}
            if isinstance(base, dict):
                doc["sensorsDates"] = [{**base, "sensorsId": 1 + i} for i in range(count)]
                notes.append(f"{count} samples")
            path = ()
        else:
            notes.append("big")
            path = ("big",)
            doc["__pad__"] = ""
        if kind in ("type", "id_text", "number", "unicode", "delete"):
            fields |= _names(path)
    return doc, notes, fields, tokens


def _serialize(doc: Any, tokens: list[str], compact: bool) -> str:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":") if compact else None)
    for i, token in enumerate(tokens):
        text = text.replace(json.dumps(f"{RAW_NUMBER}{i}"), token, 1)
    return text


@st.composite
def cases(draw: st.DrawFn) -> Case:
    doc, notes, fields, tokens = draw(value_mutations())
    text = _serialize(doc, tokens, compact=draw(st.booleans()))
    if "big" in notes:
        delta = draw(st.sampled_from([-2, -1, 0, 1, 2]) | st.integers(min_value=-300, max_value=300))
        size = len(text.replace('"__pad__":""', "").encode())
        pad = "x" * max(0, MAX_BODY_BYTES - size - len('"__pad__":""') + delta)
        text = text.replace('"__pad__":""', f'"__pad__":"{pad}"')
        notes = [n for n in notes if n != "big"] + [f"size {len(text.encode())} (limit {MAX_BODY_BYTES})"]
    raw = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(min_value=0, max_value=2)) if draw(st.integers(0, 2)) == 0 else 0):
        kind = draw(st.sampled_from(["dup_top", "dup_sample", "utf8", "bom", "trailing", "surrogate", "comma",
                                     "whitespace", "truncate", "not_object", "empty"]))  # fmt: skip
        if kind == "dup_top" and raw.startswith(b"{"):
            name = draw(st.sampled_from(["deviceId", "deviceUserid", "time", "flag", "sensorsDates"]))
            value = draw(st.sampled_from(["1", "2865", '"2864"', "null", "[]", '"2019-05-10 14:16:22"']))
            raw = b"{" + f'"{name}":{value},'.encode() + raw[1:]
            notes.append(f"duplicate key {name} (first {value})")
        elif kind == "dup_sample" and b'"sensorsId":' in raw:
            value = draw(st.sampled_from(["1", "11923", "null"]))
            raw = raw.replace(b'"sensorsId":', f'"sensorsId":{value},"sensorsId":'.encode(), 1)
            notes.append(f"duplicate key sensorsId (first {value})")
        elif kind == "utf8":
            bad = draw(st.sampled_from(INVALID_UTF8))
            at = raw.find(b'"', raw.find(b'"flag"') + 7) + 1 if b'"flag"' in raw else len(raw) // 2
            raw = raw[:at] + bad + raw[at:]
            notes.append(f"invalid UTF-8 {bad!r} at {at}")
        elif kind == "bom":
            raw = b"\xef\xbb\xbf" + raw
            notes.append("UTF-8 BOM")
        elif kind == "trailing":
            extra = draw(st.sampled_from([b" ", b"\n", b"x", b"{}", b"\x00", b" \r\n\t", b"\x0c", b"\xc2\xa0"]))
            raw = raw + extra
            notes.append(f"trailing {extra!r}")
        elif kind == "surrogate":
            raw = raw.replace(b'"flag":"', b'"flag":"\\ud800', 1)
            notes.append("lone surrogate escape in flag")
        elif kind == "comma":
            raw = raw.rstrip()[:-1] + b",}" if raw.rstrip().endswith(b"}") else raw
            notes.append("trailing comma")
        elif kind == "whitespace":
            raw = draw(st.sampled_from([b" ", b"\t", b"\r\n", b"\x0b", b"\xc2\xa0"])) + raw
            notes.append("leading whitespace")
        elif kind == "truncate":
            cut = draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))
            raw = raw[:cut]
            notes.append(f"truncated to {cut} bytes")
        elif kind == "not_object":
            raw = draw(st.sampled_from([b"[]", b"null", b"1", b'"x"', b"[" + raw + b"]", b"true"]))
            notes.append("not an object")
        elif kind == "empty":
            raw = draw(st.sampled_from([b"", b" ", b"\n"]))
            notes.append("empty body")
    case = Case(raw=raw, handler_body=raw, mutations=notes, fields=fields)
    encoding = draw(st.sampled_from(["plain"] * 12 + ["gzip", "not_gzip", "truncated_gzip", "deflate_header"]))
    if encoding == "gzip":
        case.raw = gzip.compress(raw)
        case.headers["Content-Encoding"] = "gzip"
        case.mutations.append("gzip body (signed over the JSON)")
    elif encoding == "not_gzip":
        case.headers["Content-Encoding"] = "gzip"
        case.mutations.append("Content-Encoding: gzip, body not gzip")
    elif encoding == "truncated_gzip":
        case.raw = gzip.compress(raw)[: max(1, len(raw) // 3)]
        case.headers["Content-Encoding"] = "gzip"
        case.mutations.append("truncated gzip body")
    elif encoding == "deflate_header":
        case.headers["Content-Encoding"] = draw(st.sampled_from(["deflate", "br", "x-unknown", "gzip, gzip"]))
        case.mutations.append(f"Content-Encoding: {case.headers['Content-Encoding']}, body plain")
    case.broken_encoding = encoding in ("not_gzip", "truncated_gzip", "deflate_header")
    case.structural = any(n.startswith(("nesting", "size ")) or n.endswith(" samples") for n in notes)
    content_types = ["application/json"] * 6 + ["text/plain", "", "application/json; charset=latin-1"]
    case.headers["Content-Type"] = draw(st.sampled_from(content_types))
    auth = draw(st.sampled_from(["ok"] * 8 + ["no_token", "bad_token", "no_sig", "bad_sig", "sig_other", "sig_upper",
                                              "sig_bare", "token_case"]))  # fmt: skip
    signed = case.handler_body if encoding == "gzip" else case.raw
    right = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    case.signature = "sha256=" + right
    if auth == "no_token":
        case.token = None
    elif auth == "bad_token":
        case.token = draw(
            st.sampled_from(["", "fuzz-toke", "fuzz-token ", "fuzz-token\u0000", "ｆuzz-token", "x" * 5000])
        )
    elif auth == "token_case":
        case.token = TOKEN.upper()
    elif auth == "no_sig":
        case.signature = None
    elif auth == "bad_sig":
        wrong = ["", "sha256=", "sha256=" + "0" * 64, "md5=" + right, right[:-1], "sha256=" + right + "00",
                 "sha256=ｆ" + right[1:], "sha256=\u00e9"]  # fmt: skip
        case.signature = draw(st.sampled_from(wrong))
    elif auth == "sig_other":
        case.signature = "sha256=" + hmac.new(SECRET.encode(), signed + b" ", hashlib.sha256).hexdigest()
    elif auth == "sig_upper":
        case.signature = "SHA256=" + right.upper()  # documented as accepted: still authenticated
    elif auth == "sig_bare":
        case.signature = right
    case.authenticated = auth in ("ok", "sig_upper", "sig_bare")
    if auth != "ok":
        case.mutations.append(f"auth: {auth}")
    return case


# ---------------------------------------------------------------- reading what the service wrote


class LineReader:
    """New complete lines of a growing file, from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].splitlines()


class Written:
    """The event lines and dead-letter lines of a log root, read incrementally."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.readers: dict[Path, LineReader] = {}
        self.events: dict[str, dict[str, Any]] = {}  # event id -> {"body", "file", "deviceId", "line"}
        self.event_lines = 0
        self.bad_lines: list[str] = []
        self.rejected: Counter[bytes] = Counter()
        self.rejected_lines = 0

    def _reader(self, path: Path) -> LineReader:
        if path not in self.readers:
            self.readers[path] = LineReader(path)
        return self.readers[path]

    def scan_device(self, device: str | None) -> None:
        folders = [self.root / device] if device else [p for p in self.root.iterdir() if p.is_dir()]
        for folder in folders:
            if folder.name == "rejected" or not folder.is_dir():
                continue
            for path in sorted(folder.glob("device*.log")):
                for line in self._reader(path).new_lines():
                    self._event(path, line)

    def _event(self, path: Path, line: bytes) -> None:
        self.event_lines += 1
        try:
            doc = strict_loads(line)
            self.events[str(doc["id"])] = {"body": doc["body"], "file": path.relative_to(self.root).as_posix(),
                                           "deviceId": doc.get("deviceId")}  # fmt: skip
        except (NotStrictJson, KeyError, TypeError) as exc:
            self.bad_lines.append(f"{path.name}: {exc}: {line[:200]!r}")

    def scan_rejected(self) -> int:
        """Read new dead-letter lines; how many there were."""
        new = 0
        folder = self.root / "rejected"
        if folder.is_dir():
            for path in sorted(folder.glob("rejected-*.log")):
                for line in self._reader(path).new_lines():
                    record = json.loads(line)
                    body = (base64.b64decode(record["bodyBase64"]) if "bodyBase64" in record
                            else record["body"].encode("utf-8", "surrogatepass"))  # fmt: skip
                    self.rejected[body] += 1
                    new += 1
        self.rejected_lines += new
        return new


# ---------------------------------------------------------------- the webhook run


@dataclass
class WebhookRun:
    port: int
    written: Written
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failure_counts: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    cases: int = 0
    examples: dict[int, dict[str, Any]] = field(default_factory=dict)  # the first case of each status
    previous: Case | None = None
    conn: http.client.HTTPConnection | None = None

    def fail(self, kind: str, case: Case, detail: str, status: int | None, answer: bytes) -> None:
        self.failure_counts[kind] += 1
        kept = self.failures.setdefault(kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append({"detail": detail, "status": status, "answer": answer[:500].decode("utf-8", "replace"),
                         "case": case.describe()})  # fmt: skip

    def send(self, case: Case) -> tuple[int, bytes]:
        target = "/api/webhooks/tlink" + ("" if case.token is None else "?token=" + quote(case.token, safe=""))
        headers = {k: v.encode() for k, v in case.headers.items() if v}  # UTF-8 bytes: non-Latin-1 headers too
        if case.signature is not None:
            headers["X-TLink-Signature"] = case.signature.encode()
        for attempt in range(2):  # once more on a fresh connection if the kept-alive one was closed
            conn = self.conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn = conn
            try:
                conn.request("POST", target, body=case.raw, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self.conn = None
                return resp.status, data
            except (http.client.HTTPException, OSError):
                conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def run_case(self, case: Case) -> None:
        self.cases += 1
        try:
            status, answer = self.send(case)
        except (http.client.HTTPException, OSError) as exc:
            self.outcomes["no answer"] += 1
            self.fail("no answer", case, repr(exc), None, b"")
            return
        self.statuses[status] += 1
        if status not in self.examples:  # with the request before it on the same connection
            self.examples[status] = {"answer": answer[:300].decode("utf-8", "replace"), "case": case.describe(300),
                                     "previous": self.previous.describe(300) if self.previous else None}  # fmt: skip
        self.previous = case
        dead = self.written.scan_rejected()
        try:
            doc = json.loads(answer)
        except ValueError:
            doc = None
        if status >= 500:
            self.outcomes[f"{status}"] += 1
            self.fail(f"{status} answer", case, "5xx", status, answer)
            return
        if not isinstance(doc, dict):
            self.outcomes[f"{status} not JSON"] += 1
            self.fail(f"{status} answer not JSON", case, "the answer is not a JSON object", status, answer)
            return
        if status == 200:
            self.check_accepted(case, doc, answer, dead)
        elif 400 <= status < 500:
            self.check_refused(case, status, doc, answer, dead)
        else:
            self.outcomes[f"{status}"] += 1
            self.fail(f"unexpected {status}", case, "neither 200 nor 4xx", status, answer)

    def check_accepted(self, case: Case, doc: dict[str, Any], answer: bytes, dead: int) -> None:
        duplicate = doc.get("duplicate") is True
        self.outcomes["200 duplicate" if duplicate else "200 stored"] += 1
        if not duplicate:
            self.accepted += 1
        if not case.authenticated:
            self.fail("unauthenticated accepted", case, "200 without the right token and signature", 200, answer)
            return
        if dead:
            self.fail("accepted and dead-lettered", case, f"{dead} dead-letter lines for a 200", 200, answer)
        try:
            sent = strict_loads(case.handler_body)
        except NotStrictJson as exc:
            self.fail("accepted non-strict JSON", case, str(exc), 200, answer)
            return
        if problem := readme_problem(sent):
            self.fail("accepted a body the README refuses", case, problem, 200, answer)
        event_id = str(doc.get("eventId"))
        device = sent.get("deviceId") if isinstance(sent, dict) else None
        if isinstance(device, Decimal) and device.is_finite() and device == device.to_integral_value():
            device = int(device)
        folder = str(device) if isinstance(device, int) and not isinstance(device, bool) else None
        if isinstance(device, str) and ASCII_INT.fullmatch(device):
            folder = str(int(device))
        if event_id not in self.written.events:
            self.written.scan_device(folder)
        if event_id not in self.written.events:
            self.written.scan_device(None)
        stored = self.written.events.get(event_id)
        if stored is None:
            self.fail("200 not in the log", case, f"eventId {event_id} has no line under logs/", 200, answer)
            return
        if not duplicate:
            now = datetime.now(UTC)
            days = {(now - timedelta(days=d)).strftime("%Y-%m-%d") for d in (0, 1)}  # a run may pass midnight
            place = LOG_FILE.fullmatch(str(stored["file"]))
            if place is None or place[1] != folder or place[2] not in days or stored["deviceId"] != int(place[1]):
                self.fail("stored in another file", case, f"line in {stored['file']}, device {folder}", 200, answer)
        if difference := same_value(sent, stored["body"]):
            kind = "duplicate of a different body" if duplicate else "stored body differs from the body sent"
            self.fail(kind, case, difference, 200, answer)

    def check_refused(self, case: Case, status: int, doc: dict[str, Any], answer: bytes, dead: int) -> None:
        self.outcomes[f"{status}"] += 1
        error = doc.get("error")
        if list(doc) != ["error"] or not isinstance(error, str) or not error:
            self.fail(f"{status} not {{'error': '...'}}", case, "the error answer's shape", status, answer)
            error = ""
        if case.broken_encoding and status != 200 and not dead:
            return  # a body that cannot be decoded: any JSON 4xx
        if not case.authenticated:
            if status not in (401, 413):
                self.fail("unauthenticated not 401", case, f"{status} for a wrong token or signature", status, answer)
            if dead:
                self.fail("unauthenticated dead-lettered", case, f"{dead} dead-letter lines", status, answer)
            return
        if status == 413:
            if len(case.raw) <= MAX_BODY_BYTES and len(case.handler_body) <= MAX_BODY_BYTES:
                self.fail("413 within the limit", case, f"{len(case.raw)} bytes", status, answer)
            return
        if status == 408:
            return  # the body did not arrive in time (slow-client limit): nothing to dead-letter
        if status == 401:
            self.fail("authenticated refused 401", case, "right token and signature", status, answer)
            return
        body = case.handler_body
        if self.written.rejected[body] > 0:
            self.written.rejected[body] -= 1
        else:
            self.fail(f"{status} not dead-lettered", case, f"{dead} new dead-letter lines, none with this body",
                      status, answer)  # fmt: skip
        try:
            sent = strict_loads(body)
        except NotStrictJson:
            return
        if isinstance(sent, dict) and case.fields and not case.structural and "JSON" not in error:
            if readme_problem(sent) and not any(name in error for name in case.fields):
                self.fail("error names none of the changed fields", case,
                          f"changed {sorted(case.fields)}, error {error!r}", status, answer)  # fmt: skip


def run_webhook(cases_wanted: int, seed_value: int, workdir: Path) -> dict[str, Any]:
    """Start a service with WEBHOOK_TOKEN and PUSH_WEBHOOK_SECRET, fuzz it, verify; the figures."""
    service = start_service(workdir / "webhook", {"WEBHOOK_TOKEN": TOKEN, "PUSH_WEBHOOK_SECRET": SECRET,
                                                  "MAX_BODY_BYTES": str(MAX_BODY_BYTES)})  # fmt: skip
    started = time.monotonic()
    run = WebhookRun(service.port, Written(service.workdir / "logs"))
    try:

        @seed(seed_value)
        @settings(max_examples=cases_wanted, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=False)  # fmt: skip
        @given(cases())
        def fuzz(case: Case) -> None:
            run.run_case(case)

        fuzz()
        run.written.scan_device(None)
        run.written.scan_rejected()
        if run.conn is not None:
            run.conn.close()
        verify_exit, verify_output = service.verify()
    finally:
        service.stop()
    seconds = time.monotonic() - started
    if run.written.event_lines != run.accepted:
        run.failure_counts["log lines are not the accepted events"] += 1
        run.failures.setdefault("log lines are not the accepted events", []).append(
            {"detail": f"{run.written.event_lines} lines for {run.accepted} accepted pushes"}
        )
    if run.written.bad_lines:
        run.failure_counts["unreadable log lines"] += len(run.written.bad_lines)
        run.failures.setdefault("unreadable log lines", []).extend({"detail": d} for d in run.written.bad_lines[:3])
    if verify_exit != 0:
        run.failure_counts["verify failed"] += 1
        run.failures.setdefault("verify failed", []).append({"detail": verify_output[-2000:]})
    return {
        "cases": run.cases, "seconds": round(seconds, 1), "outcomes": dict(run.outcomes.most_common()),
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())}, "accepted_events": run.accepted,
        "log_lines": run.written.event_lines, "dead_letter_lines": run.written.rejected_lines,
        "verify_exit": verify_exit, "verify_output": verify_output[-500:], "failure_counts": dict(run.failure_counts),
        "failures": run.failures, "failed": sum(run.failure_counts.values()), "max_body_bytes": MAX_BODY_BYTES,
        "examples": {str(k): v for k, v in sorted(run.examples.items())},
        "service_log_tail": service.log_tail(2000) if run.failure_counts else "",
    }  # fmt: skip


# ---------------------------------------------------------------- schemathesis


def start_service(workdir: Path, env: dict[str, str]) -> Service:
    workdir.mkdir(parents=True)
    service = Service(workdir, f"sqlite:///{workdir / 'service.db'}", free_port())
    service.env.update({"LOG_LEVEL": "WARNING", **env})
    service.start()

    async def up() -> None:
        async with aiohttp.ClientSession() as session:
            await service.wait_up(session)

    asyncio.run(up())
    return service


SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")  # the one rule a schema cannot state


def run_schemathesis(mode: str, max_examples: int, seed_value: int, workdir: Path) -> dict[str, Any]:
    """`st run --checks all` against a fresh service (one pushed sample, so ids exist); its JSON report's totals."""
    keys = API_KEY if mode == "api_keys" else ""
    service = start_service(workdir / f"schemathesis-{mode}", {"API_KEYS": keys})
    report = service.workdir / "schemathesis.json"
    command = [str(BIN / "st"), "--config-file", str(SCHEMATHESIS_CONFIG), "run", f"{service.base}/api/openapi.json",
               "--checks", "all",
               "--max-examples", str(max_examples), "--seed", str(seed_value), "--report", "json",
               "--report-json-path", str(report), "--no-color", "--generation-database", "none",
               "--request-timeout", "30", "--workers", "1"]  # fmt: skip
    if keys:
        command += ["--header", f"Authorization: Bearer {keys}"]
    started = time.monotonic()
    try:
        seeded = seed_pushes(service.port)
        done = subprocess.run(command, cwd=service.workdir, capture_output=True, text=True, timeout=3600,
                              env={**os.environ, "NO_COLOR": "1"})  # fmt: skip
    finally:
        service.stop()
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    try:
        doc = json.loads(report.read_text())
    except (OSError, ValueError):
        doc = {}
    failures = doc.get("failures", [])
    shown = " ".join(command[1:]).replace(service.base, "<service>")
    shown = shown.replace(str(SCHEMATHESIS_CONFIG), "ops/schemathesis.toml")
    return {
        "mode": mode, "command": shown, "exit": done.returncode,
        "seeded_push_status": seeded, "seconds": round(seconds, 1), "operations": doc.get("operations", {}),
        "test_cases": doc.get("test_cases", {}),
        "failures_by_check": {f"{f['code']} {f['title']}": {"count": f["count"], "operations": f["operations"]}
                              for f in failures},
        "errors": doc.get("errors", []), "warnings": {k: v for k, v in doc.get("warnings", {}).items() if v},
        "failed": sum(f["count"] for f in failures) + len(doc.get("errors", [])) + (0 if doc else 1),
        "reproductions": _reproductions(output.replace(service.base, "http://<service>")),
        "output_tail": "" if doc else output[-3000:],
    }  # fmt: skip


def seed_pushes(port: int) -> int:
    """Push the fixture, and a copy as user 1, device 1, sensors 1-3 (ids the schema's boundary cases use), so
    that the read operations have data to answer with; the highest status."""
    body = sample_push()
    copy = {**body, "deviceId": 1, "deviceUserid": 1}
    copy["sensorsDates"] = [{**sample, "sensorsId": i} for i, sample in enumerate(body["sensorsDates"], start=1)]
    statuses = []
    for doc in (body, copy):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/webhooks/tlink", body=json.dumps(doc), headers={"Content-Type": "application/json"})
        statuses.append(conn.getresponse().status)
        conn.close()
    return max(statuses)


def _reproductions(output: str, chars: int = 20_000) -> str:
    """The FAILURES part of schemathesis' output: each failure with its curl command."""
    start = output.find("FAILURES")
    end = output.find("=== WARNINGS", start) if start >= 0 else -1
    if end < 0:
        end = output.find("=== SUMMARY", start)
    text = output[start:end] if start >= 0 else ""
    return text[:chars]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ops.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhook-cases", type=int, default=10_000, help="webhook cases (0: none)")
    parser.add_argument(
        "--schemathesis-cases",
        type=int,
        default=100,
        help="schemathesis --max-examples per operation (0: skip schemathesis)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON result")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    return parser.parse_args(argv)


def summary(result: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    web = result.get("webhook")
    if web:
        for outcome, count in web["outcomes"].items():
            rows.append(["webhook", outcome, count])
        for kind, count in web["failure_counts"].items():
            rows.append(["webhook", f"FAILED: {kind}", count])
    for run in result.get("schemathesis", []):
        ops = run["operations"]
        tested = f"operations tested {ops.get('tested', '?')}/{ops.get('total', '?')}, cases generated"
        rows.append([f"schemathesis {run['mode']}", tested, run["test_cases"].get("generated", "?")])
        for check, failure in run["failures_by_check"].items():
            rows.append([f"schemathesis {run['mode']}", f"FAILED: {check}", failure["count"]])
        if run["errors"]:
            rows.append([f"schemathesis {run['mode']}", "ERRORS", len(run["errors"])])
    return table(["run", "outcome", "count"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    print(f"fuzz: working in {workdir}", flush=True)
    started = time.monotonic()
    result: dict[str, Any] = {"seed": args.seed, "webhook_cases": args.webhook_cases,
                              "schemathesis_cases": args.schemathesis_cases}  # fmt: skip
    if args.schemathesis_cases > 0:
        result["schemathesis"] = [run_schemathesis(mode, args.schemathesis_cases, args.seed, workdir)
                                  for mode in ("open", "api_keys")]  # fmt: skip
    if args.webhook_cases > 0:
        result["webhook"] = run_webhook(args.webhook_cases, args.seed, workdir)
    failed = result.get("webhook", {}).get("failed", 0) + sum(r["failed"] for r in result.get("schemathesis", []))
    result |= {"failed": failed, "ok": failed == 0, "seconds": round(time.monotonic() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"fuzz-{stamp}.json"
    document = {"at": stamp, "machine": machine_facts(), "code": code_version(), **result}
    text = json.dumps(document, indent=2, default=str, ensure_ascii=False)
    for folder, name in ((workdir, "<workdir>"), (PROJECT, "<project>")):  # no paths of this machine
        text = text.replace(json.dumps(str(folder))[1:-1], name)
    path.write_text(text + "\n")
    print(summary(result))
    print(f"results: {path}")
    if args.keep or failed:
        print(f"working folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
