"""A push body: read within the bytes budget (`BodyBudget`), then as a JSON object whose every value is
the value received.

orjson reads a body in about 2 µs, but some bodies it reads into something else than they
say: of duplicate keys it keeps the last, an integer outside 64 bits becomes a float, a
number too small for a double becomes 0.0; and it reads objects nested up to 1,024 levels
deep while the line encoder writes only 254. `parse_object` rejects all of these before
anything is logged (InvalidBody naming the problem):

- nesting deeper than MAX_JSON_DEPTH levels (a TLINK body has three: the body, its
  sensorsDates list, a sample);
- a duplicate key in any object;
- an integer outside -2**63 .. 2**64-1 (what orjson keeps as an integer);
- a non-zero number that reads as 0.0 (underflow); a number that overflows a double is
  already invalid JSON to orjson;
- a number with more significant digits than a double keeps (9007199254740993.0 would be
  logged as 9007199254740992.0): one whose shortest writing as a double is not the same
  decimal number.

The hot path is orjson, one walk over the parsed values (depth, floats) and a colon count
of the body and of orjson's writing of it (see `_dropped_keys`). Only when these cannot
rule a problem out (the counts differ, a float is 0.0 or of 2**63 or more, or the body has a
run of 16 digits) is the body
read a second time, by the standard json module with hooks that see every key and every
number as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import orjson

from projections.readings import InvalidBody
from service.http.middleware.errors import ApiError

MAX_JSON_DEPTH = 32  # objects and arrays nested in one another, the body itself being level 1
MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**64 - 1
_LARGE_FLOAT = float(2**63)  # a float this large may be an integer orjson could not keep
_NONZERO_DIGIT = re.compile(r"[1-9]")
# 16 digits or more in a row (a dot may be among them): a number a double may not hold as
# written. Up to 15 significant digits always come back as written.
_LONG_NUMBER = re.compile(rb"[0-9][0-9.]{15}")


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object holding exactly what it says, or InvalidBody saying why not."""
    if not body or body.isspace():
        raise InvalidBody("empty body: expected a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidBody("body must be a JSON object")
    if _odd_float(doc) or _LONG_NUMBER.search(body) is not None or _dropped_keys(body, doc):
        _strict(body)
    return doc


def _dropped_keys(body: bytes, doc: dict[str, Any]) -> bool:
    """Whether orjson may have dropped a duplicate key: False only when it cannot have.

    Count colons. The body's are one per key written plus those inside its strings; those of
    orjson's compact writing of `doc` are one per key kept plus those inside the strings kept,
    which are the body's unless a string escapes a colon (`\\u003a`). So without such escapes,
    equal counts mean every key written was kept. Two byte counts and one orjson.dumps: far
    cheaper than a scan for keys in Python.
    """
    if b"\\u003" in body:  # \u003a or \u003A: a colon the body's count would not see
        return True
    return body.count(b":") != orjson.dumps(doc).count(b":")


def _odd_float(doc: dict[str, Any]) -> bool:
    """Whether a float may not be what was written (0.0: an underflow? 2**63 or more: an
    integer orjson could not keep?); InvalidBody when the nesting is deeper than MAX_JSON_DEPTH."""
    odd = False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidBody(f"body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels")
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is dict or kind is list:
                stack.append((value, depth + 1))
            elif kind is float and (value == 0.0 or abs(value) >= _LARGE_FLOAT):
                odd = True
    return odd


class _Odd:
    """A number whose value orjson does not keep, as the strict reading met it."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _integer(text: str) -> int | _Odd:
    if len(text) <= 20:  # "-9223372036854775808", "18446744073709551615"
        value = int(text)
        if MIN_INTEGER <= value <= MAX_INTEGER:
            return value
    shown = text if len(text) <= 40 else f"of {len(text.lstrip('-'))} digits"
    return _Odd(f"integer {shown} is outside -2**63 .. 2**64-1")


def _float(text: str) -> float | _Odd:
    value = float(text)
    if value == 0.0 and _NONZERO_DIGIT.search(text.split("e")[0].split("E")[0]):
        return _Odd(f"number {text[:40]} is too small for a double (it would read as 0)")
    if Decimal(repr(value)) != Decimal(text):  # the log would hold another number
        return _Odd(
            f"number {text[:40]} has more significant digits than a double keeps (it would be logged as {value!r})"
        )
    return value


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Odd:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            break
        seen.add(key)
    return _Odd(f"duplicate key {key[:40]!r} (each key of an object must appear once)")


def _first_odd(node: Any, path: str) -> str | None:
    """Where in a strictly read document the first odd value is, and what is odd about it."""
    if type(node) is _Odd:
        return f"{path or 'body'}: {node.problem}"
    if type(node) is dict:
        children: Any = ((f"{path}.{k}" if path else k, v) for k, v in node.items())
    elif type(node) is list:
        children = ((f"{path}[{i}]", v) for i, v in enumerate(node))
    else:
        return None
    for where, value in children:
        found = _first_odd(value, where)
        if found is not None:
            return found
    return None


def _strict(body: bytes) -> None:
    """Read the body again, seeing every key and number as written; InvalidBody naming the
    first problem and where it is (`sensorsDates[0].sensorsTypeId: integer ... is outside ...`)."""
    try:
        doc = json.loads(body, object_pairs_hook=_pairs, parse_int=_integer, parse_float=_float)
    except ValueError as exc:  # orjson read it: the standard reader should too
        raise InvalidBody(f"invalid JSON: {exc}") from None
    problem = _first_odd(doc, "")  # at most MAX_JSON_DEPTH deep: checked before
    if problem is not None:
        raise InvalidBody(problem)


class BodyBudget:
    """Bytes of push bodies being read or handled at once, bounded by MAX_BUFFERED_BODY_BYTES."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold `size` bytes of the budget; 503 with Retry-After when they are not free."""
        if self.used + size > self.limit:
            raise ApiError(503, "too many push bodies in flight; retry later", headers={"Retry-After": "1"})
        self.used += size
        try:
            yield
        finally:
            self.used -= size
