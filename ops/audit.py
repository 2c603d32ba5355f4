#!/usr/bin/env python3
"""Audit a copy of the event log, or a backup of it, with nothing but Python's standard library.

    python3 ops/audit.py DIR

DIR is a log root (a copy of SYNC_LOG_DIR) or a folder written by `tlink-push backup`.
No install, no database, no project module: this file re-implements the checks from the
format described in docs/event-log.md, so it can be read and run on its own.

- A backup (DIR holds MANIFEST.json): every file the manifest names has its size, line
  count, last line's SHA-256 and whole-file SHA-256, and no other file is in the backup.
  MANIFEST.previous.json without MANIFEST.json is a backup that did not finish.
- Every device folder `<id>/`: its daily files `device<id>-YYYY-MM-DD.log` oldest first,
  each line a JSON object with the fields v, id, type, receivedAt, deviceId, userId,
  prev, body (and request, on backfill lines) in this order, `deviceId` the folder's,
  every line `\\n`-terminated, and each `prev` the SHA-256 of the line before it (across
  days; 64 zeros for the device's first line; a device whose oldest file begins
  elsewhere is noted: older files were deleted by retention or are missing).
- `rejected/` and `sync-failures/`: each line a JSON object.
- `.torn`, `.foreign` and `.replaced` files are listed as notes, not part of any chain.

Prints `note:` lines, a `FAILED:` line per device or file that fails (its path and line
number), and `OK: ...` when nothing failed. Exit status 0 (all good), 1 (a check failed),
2 (DIR is not a folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ZERO_HASH = "0" * 64
FIELDS = ["v", "id", "type", "receivedAt", "deviceId", "userId", "prev", "body"]
REQUEST_TYPES = {"backfill", "backfill_failed"}  # the types whose lines end with `request`
EVENT_TYPES = {"push", "sync", "sync_failed", *REQUEST_TYPES}
MANIFEST = "MANIFEST.json"
PREVIOUS_MANIFEST = "MANIFEST.previous.json"
BACKUP_NAMES = {MANIFEST, PREVIOUS_MANIFEST, MANIFEST + ".partial"}
RECORD_FOLDERS = ("rejected", "sync-failures")  # JSON Lines beside the log, not hash-chained
LOG_NAME = re.compile(r"^device(\d+)-(\d{4}-\d{2}-\d{2})\.log$")
SIDE_NAME = re.compile(r"^device(\d+)-(\d{4}-\d{2}-\d{2})\.log\.(torn|foreign|replaced)(\.\d+)?$")
EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class Audit:
    """What the audit found: failures, notes and counts."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.files = 0
        self.lines = 0
        self.devices = 0


def lines_of(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its newline) of each complete line; (n, None) for an unterminated tail."""
    with open(path, "rb") as handle:
        pending, number = b"", 0
        while chunk := handle.read(CHUNK):
            parts = (pending + chunk).split(b"\n")
            pending = parts.pop()
            for raw in parts:
                number += 1
                yield number, raw
    if pending:
        yield number + 1, None


def line_problem(raw: bytes, device_id: int) -> tuple[str | None, str]:
    """(what is wrong with a device log line or None, its prev)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not a JSON line", ""
    if not isinstance(doc, dict):
        return "not a JSON object", ""
    keys = list(doc)
    expected = [*FIELDS, "request"] if doc.get("type") in REQUEST_TYPES and "request" in doc else FIELDS
    if keys != expected:
        return f"fields {keys} are not {expected}", ""
    prev = doc["prev"]
    checks: list[tuple[bool, str]] = [
        (doc["v"] == 1 and type(doc["v"]) is int, f"v is {doc['v']!r}, not 1"),
        (isinstance(doc["id"], str) and bool(EVENT_ID.match(doc["id"])), f"id {doc['id']!r} is not a UUID"),
        (doc["type"] in EVENT_TYPES, f"type {doc['type']!r} is not one of {sorted(EVENT_TYPES)}"),
        (isinstance(doc["receivedAt"], str) and bool(INSTANT.match(doc["receivedAt"])),
         f"receivedAt {doc['receivedAt']!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ"),
        (type(doc["deviceId"]) is int and doc["deviceId"] == device_id,
         f"deviceId {doc['deviceId']!r} is not the folder's {device_id}"),
        (type(doc["userId"]) is int and doc["userId"] > 0, f"userId {doc['userId']!r} is not a positive integer"),
        (isinstance(prev, str) and bool(SHA256.match(prev)), "prev is not a hex SHA-256"),
        (isinstance(doc["body"], dict), "body is not an object"),
        (isinstance(doc.get("request", {}), dict), "request is not an object"),
    ]  # fmt: skip
    for good, problem in checks:
        if not good:
            return problem, ""
    return None, str(prev)


def audit_device(root: Path, folder: Path, device_id: int, audit: Audit) -> None:
    """One device's files, oldest day first, as one hash chain; a FAILED line at its first problem."""
    days: list[tuple[str, Path]] = []
    for path in sorted(folder.iterdir()):
        log_match, side_match = LOG_NAME.match(path.name), SIDE_NAME.match(path.name)
        if log_match and int(log_match.group(1)) == device_id and path.is_file():
            days.append((log_match.group(2), path))
        elif side_match and int(side_match.group(1)) == device_id:
            audit.notes.append(f"{rel(root, path)}: a {side_match.group(3)} file, not part of the log")
        else:
            audit.notes.append(f"{rel(root, path)}: not a log file of device {device_id}; not checked")
    prev: str | None = None  # None: nothing before the oldest file is known
    for _, path in sorted(days):
        audit.files += 1
        for number, raw in lines_of(path):
            where = f"{rel(root, path)}:{number}"
            if raw is None:
                audit.failures.append(f"{where}: unterminated last line (cut off, or still being written)")
                return
            problem, line_prev = line_problem(raw, device_id)
            if problem is not None:
                audit.failures.append(f"{where}: not a valid event line: {problem}")
                return
            if prev is None and line_prev != ZERO_HASH:
                audit.notes.append(f"{where}: device {device_id} begins mid-chain (older files deleted or missing)")
            elif prev is not None and line_prev != prev:
                audit.failures.append(f"{where}: hash chain broken: prev is not the SHA-256 of the line before")
                return
            prev = hashlib.sha256(raw).hexdigest()
            audit.lines += 1


def audit_records(root: Path, folder: Path, audit: Audit) -> None:
    """The dead letters or sync failures: one JSON object per line."""
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        audit.files += 1
        for number, raw in lines_of(path):
            if raw is None:
                audit.notes.append(f"{rel(root, path)}:{number}: unterminated last line")
                break
            try:
                good = isinstance(json.loads(raw.decode("utf-8")), dict)
            except (UnicodeDecodeError, ValueError):
                good = False
            if not good:
                audit.failures.append(f"{rel(root, path)}:{number}: not a JSON object")
                break


def audit_manifest(root: Path, audit: Audit) -> None:
    """A backup's files against its manifest."""
    path = root / MANIFEST
    try:
        doc: Any = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        audit.failures.append(f"{MANIFEST}: cannot be read as JSON: {exc}")
        return
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("format") != "tlink-push-backup" or doc.get("version") != 1:
        audit.failures.append(f"{MANIFEST}: not a version 1 tlink-push-backup manifest")
        return
    if not isinstance(files, list):
        audit.failures.append(f"{MANIFEST}: no list of files")
        return
    audit.notes.append(
        f"backup made {doc.get('createdAt')} on {doc.get('host')} by {doc.get('software')}: {len(files)} files"
    )
    listed = set()
    for number, entry in enumerate(files, start=1):
        name = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name.startswith("/") or ".." in name.split("/"):
            audit.failures.append(f"{MANIFEST}: file entry {number} has no usable path")
            continue
        listed.add(name)
        problem = manifest_problem(root / name, entry)
        if problem is not None:
            audit.failures.append(f"{name}: {problem}")
    for name in all_files(root):
        if name not in listed and name not in BACKUP_NAMES:
            audit.failures.append(f"{name}: in the backup but not named in {MANIFEST}")


def manifest_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """How a file differs from its manifest entry, or None."""
    digest, count, size, last = hashlib.sha256(), 0, 0, None
    try:
        for _, raw in lines_of(path):
            if raw is not None:
                count, last = count + 1, raw
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return f"named in {MANIFEST} but missing"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    last_hash = None if last is None else hashlib.sha256(last).hexdigest()
    expected = entry.get("size")
    if size != expected:
        cut = " (truncated)" if isinstance(expected, int) and size < expected else ""
        return f"{size} bytes, {MANIFEST} says {expected}{cut}"
    lines, last_line = entry.get("lines"), entry.get("lastLineHash")
    if count != lines or last_hash != last_line:
        return f"{count} lines, the last one's hash {last_hash}; {MANIFEST} says {lines}, {last_line}"
    if digest.hexdigest() != entry.get("sha256"):
        return f"its bytes differ from the backup's (SHA-256 does not match {MANIFEST})"
    return None


def all_files(root: Path) -> Iterator[str]:
    """Relative paths of every regular file under the root."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield rel(root, path)


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def run(root: Path) -> Audit:
    """Every check on a log root or backup."""
    audit = Audit()
    if (root / MANIFEST).exists():
        audit_manifest(root, audit)
    elif (root / PREVIOUS_MANIFEST).exists():
        audit.failures.append(f"{PREVIOUS_MANIFEST} without {MANIFEST}: a backup that did not finish")
    for path in sorted(root.iterdir()):
        if path.is_dir() and path.name.isdigit() and int(path.name) > 0:
            audit.devices += 1
            audit_device(root, path, int(path.name), audit)
        elif path.is_dir() and path.name in RECORD_FOLDERS:
            audit_records(root, path, audit)
        elif path.name not in BACKUP_NAMES:
            audit.notes.append(f"{path.name}: not part of the log; not checked")
    if audit.files == 0:
        audit.failures.append("no log files found")
    return audit


def main(argv: list[str] | None = None) -> int:
    """Run the audit on the folder named on the command line and print the outcome."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(args) != 1:
        print("usage: python3 ops/audit.py DIR (a copy of the log root, or a backup)", file=sys.stderr)
        return 2
    root = Path(args[0])
    if not root.is_dir():
        print(f"audit.py: {root}: not a folder", file=sys.stderr)
        return 2
    audit = run(root)
    for note in audit.notes:
        print(f"note: {note}")
    for failure in audit.failures:
        print(f"FAILED: {failure}")
    if audit.failures:
        return 1
    print(f"OK: {audit.devices} devices, {audit.files} files, {audit.lines} lines, every hash chain intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
