"""Backups of the log root: a consistent copy with a manifest, checked offline, and restored into an empty root.

A backup is a folder holding a copy of every file under the log root (device logs and the
files set aside next to them, dead letters, sync failures) at its relative path, and
`MANIFEST.json`, written last and atomically, naming each file with its size, line count,
last line's hash and SHA-256. Files whose name ends in `.log` are appended to while the
service runs: each is copied up to its last complete line as of the moment it is read.
Every other file (`.torn`, `.foreign`, `.replaced`, anything else) is copied as it is.

Backing up into a folder that holds a backup is incremental: a file whose size and last
line are those of the manifest there is not copied again; a file that grew only gets
its new bytes, after the line the manifest names as its last is found at the same place
in the log (otherwise the log changed under the backup, which is refused). Files no
longer in the log root (retention deleted them) stay in the backup. While a backup runs
its previous manifest is `MANIFEST.previous.json`, so an interrupted backup has no
`MANIFEST.json` and the next run picks up from the previous one.

The format is documented in docs/backup.md; ops/audit.py checks it with nothing but the
standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from eventlog.events import EventLogError, format_instant, line_hash, utc_now
from eventlog.files import READ_CHUNK, complete_end, fsync_dir, last_line_and_size, line_ending_at

MANIFEST = "MANIFEST.json"
PREVIOUS_MANIFEST = "MANIFEST.previous.json"
MANIFEST_FORMAT = "tlink-push-backup"
MANIFEST_VERSION = 1
_PARTIAL = MANIFEST + ".partial"
_OWN_NAMES = frozenset({MANIFEST, PREVIOUS_MANIFEST, _PARTIAL})


class BackupError(EventLogError):
    """A backup or restore that cannot be done, or a backup that does not match its manifest."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a backup as the manifest names it."""

    path: str  # relative, with `/`
    size: int
    lines: int
    last_line_hash: str | None  # SHA-256 of the last complete line without its newline; None: no complete line
    sha256: str  # of the whole copy

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "lines": self.lines,
            "lastLineHash": self.last_line_hash,
            "sha256": self.sha256,
        }


@dataclass(slots=True)
class BackupReport:
    """What a backup did: the files it names and how each got there."""

    files: list[FileEntry]
    copied: int = 0  # files copied whole
    extended: int = 0  # files that only got their new bytes
    unchanged: int = 0
    kept: list[str] = field(default_factory=list)  # files of the previous backup no longer in the log root
    bytes_copied: int = 0

    @property
    def size(self) -> int:
        """Bytes of every file the backup holds."""
        return sum(entry.size for entry in self.files)


Progress = Callable[[int], None]


def appended_to(relative: str) -> bool:
    """Whether the service appends to a file of this name (copied up to its last complete line)."""
    return relative.endswith(".log")


# ---------------------------------------------------------------- the manifest


def read_manifest(folder: Path, name: str = MANIFEST) -> list[FileEntry]:
    """The file entries of a backup's manifest; BackupError naming what is wrong with it."""
    path = folder / name
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{path}: no manifest: not a backup, or a backup that did not finish") from None
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    except ValueError as exc:
        raise BackupError(f"{path}: the manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise BackupError(f'{path}: not a backup manifest (no "format": "{MANIFEST_FORMAT}")')
    if doc.get("version") != MANIFEST_VERSION:
        raise BackupError(f"{path}: manifest version {doc.get('version')!r}, this version reads {MANIFEST_VERSION}")
    files = doc.get("files")
    if not isinstance(files, list):
        raise BackupError(f"{path}: the manifest has no list of files")
    entries = []
    for number, item in enumerate(files, start=1):
        try:
            entry = FileEntry(
                path=item["path"], size=item["size"], lines=item["lines"],
                last_line_hash=item["lastLineHash"], sha256=item["sha256"],
            )  # fmt: skip
        except (KeyError, TypeError):
            raise BackupError(f"{path}: file entry {number} lacks path, size, lines, lastLineHash or sha256") from None
        if not isinstance(entry.path, str) or not _safe_relative(entry.path):
            raise BackupError(f"{path}: file entry {number} has a path outside the backup: {entry.path!r}")
        entries.append(entry)
    return entries


def _safe_relative(relative: str) -> bool:
    parts = relative.split("/")
    return bool(relative) and not relative.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _write_manifest(folder: Path, entries: list[FileEntry]) -> None:
    """MANIFEST.json, written to a temporary name, fsynced and renamed into place (then the folder fsynced)."""
    doc = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "createdAt": format_instant(utc_now()),
        "host": socket.gethostname(),
        "software": f"tlink-push {_version()}",
        "files": [entry.to_json() for entry in sorted(entries, key=lambda e: e.path)],
    }
    partial = folder / _PARTIAL
    with open(partial, "wb") as out:
        out.write(json.dumps(doc, indent=1).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, folder / MANIFEST)
    fsync_dir(folder)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tlink-push")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- backup


def backup(root: Path, dest: Path, progress: Progress | None = None) -> BackupReport:
    """Copy the log root into `dest` (empty, new, or holding a backup: then incremental); see the module doc."""
    root, dest = root.absolute(), dest.absolute()
    if not root.is_dir():
        raise BackupError(f"{root}: the log root (SYNC_LOG_DIR) is not a folder")
    if dest.resolve().is_relative_to(root.resolve()) or root.resolve().is_relative_to(dest.resolve()):
        raise BackupError(f"{dest}: a backup must be outside the log root {root}, and not around it")
    previous = _previous_backup(dest)
    by_path = {entry.path: entry for entry in previous}
    report = BackupReport(files=[])
    seen: set[str] = set()
    try:
        for number, relative in enumerate(_files_under(root), start=1):
            copied = _back_up_file(root, dest, relative, by_path.get(relative), report)
            if copied is not None:  # None: gone since the folder was listed (retention, start-up's repair)
                seen.add(relative)
                report.files.append(copied)
            if progress is not None and number % 1000 == 0:
                progress(number)
        for entry in previous:
            if entry.path not in seen and (dest / entry.path).is_file():
                report.files.append(entry)
                report.kept.append(entry.path)
        for folder in sorted({(dest / e.path).parent for e in report.files}, key=lambda p: -len(p.parts)):
            fsync_dir(folder)
        _write_manifest(dest, report.files)
        (dest / PREVIOUS_MANIFEST).unlink(missing_ok=True)
        fsync_dir(dest)
    except OSError as exc:
        where, why = exc.filename or dest, exc.strerror
        raise BackupError(f"{where}: the backup failed: {why}; {dest} has no {MANIFEST} until one finishes") from None
    return report


def _previous_backup(dest: Path) -> list[FileEntry]:
    """The entries of the backup already in `dest` ([] for an empty or new folder); MANIFEST.json moved aside."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        names = set(os.listdir(dest))
        probe = dest / _PARTIAL
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise BackupError(f"{dest}: cannot write the backup there: {exc.strerror}") from None
    if MANIFEST in names:
        entries = read_manifest(dest)
        os.replace(dest / MANIFEST, dest / PREVIOUS_MANIFEST)
        fsync_dir(dest)
        return entries
    if PREVIOUS_MANIFEST in names:  # a backup that was interrupted: go on from the one before it
        return read_manifest(dest, PREVIOUS_MANIFEST)
    if names - _OWN_NAMES:
        raise BackupError(
            f"{dest}: not empty and holds no backup ({MANIFEST}): back up into an empty folder, or into one"
            " that holds a backup to add what changed"
        )
    return []


def _files_under(root: Path) -> Iterator[str]:
    """Relative paths (with `/`) of the regular files under the root, sorted; symbolic links are not followed."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        base = Path(folder).relative_to(root)
        for name in sorted(names):
            if (Path(folder) / name).is_file() and not (Path(folder) / name).is_symlink():
                yield (base / name).as_posix()


def _back_up_file(
    root: Path, dest: Path, relative: str, before: FileEntry | None, report: BackupReport
) -> FileEntry | None:
    """Copy one file (or what it gained since `before`) and describe the copy; None when the file is gone."""
    source, target = root / relative, dest / relative
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"{source}: cannot read it: {exc.strerror}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        end = complete_end(handle, size) if appended_to(relative) else size
        have = target.stat().st_size if before is not None and target.is_file() else -1
        if before is not None and have >= before.size:
            if end == before.size and _hash_of_line_ending_at(handle, end) == before.last_line_hash:
                if have > before.size:  # bytes an interrupted backup added
                    os.truncate(target, before.size)
                report.unchanged += 1
                return before
            if appended_to(relative):
                if end < before.size or _hash_of_line_ending_at(handle, before.size) != before.last_line_hash:
                    raise BackupError(
                        f"{source}: the backup in {dest} holds {before.size} bytes of it ending in another line than"
                        f" the file has there ({end} bytes of complete lines now): the file changed behind the log;"
                        " back up into an empty folder and keep both"
                    )
                entry = _copy(handle, target, relative, before.size, end)
                report.bytes_copied += end - before.size
                report.extended += 1
                return entry
        entry = _copy(handle, target, relative, 0, end)
        report.bytes_copied += end
        report.copied += 1
    return entry


def _hash_of_line_ending_at(handle: BinaryIO, end: int) -> str | None:
    """The hash of the line whose newline is the byte before `end` (None when there is none)."""
    line = line_ending_at(handle, end)
    return None if line is None else line_hash(line)


def _copy(handle: BinaryIO, target: Path, relative: str, start: int, end: int) -> FileEntry:
    """Bytes [start, end) of the open source into `target` (truncated to `start` first), fsynced; the copy's
    manifest entry, hashed as it is written (only the `start` bytes already there are read back)."""
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True)
    digest, lines = hashlib.sha256(), 0
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, start)
        kept = start
        while kept > 0 and (chunk := os.read(fd, min(READ_CHUNK, kept))):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            kept -= len(chunk)
        if kept:
            raise BackupError(f"{target}: {kept} bytes of its earlier copy could not be read back")
        os.lseek(fd, start, os.SEEK_SET)
        handle.seek(start)
        left = end - start
        while left > 0 and (chunk := handle.read(min(READ_CHUNK, left))):
            os.write(fd, chunk)
            digest.update(chunk)
            lines += chunk.count(b"\n")
            left -= len(chunk)
        if left:
            raise BackupError(f"{target}: its source ended {left} bytes early while being copied")
        os.fsync(fd)
    finally:
        os.close(fd)
    last = line_ending_at(handle, complete_end(handle, end))  # the copy's last complete line: the source's
    return FileEntry(relative, end, lines, None if last is None else line_hash(last), digest.hexdigest())


def _hash_and_lines(path: Path) -> tuple[str, int, int]:
    """(SHA-256, newlines, bytes) of a file."""
    digest, lines, size = hashlib.sha256(), 0, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            size += len(chunk)
    return digest.hexdigest(), lines, size


# ---------------------------------------------------------------- checking and restoring


def check_backup(folder: Path, progress: Progress | None = None) -> list[FileEntry]:
    """Every file of a backup against its manifest, and no file the manifest does not name; its entries.

    BackupError names the first file that differs (missing, another size, another line count,
    last line or SHA-256) or that the manifest does not list.
    """
    if not folder.is_dir():
        raise BackupError(f"{folder}: no such folder")
    entries = read_manifest(folder)
    for number, entry in enumerate(entries, start=1):
        path = folder / entry.path
        try:
            digest, lines, size = _hash_and_lines(path)
            last, _ = last_line_and_size(path)
        except FileNotFoundError:
            raise BackupError(f"{path}: named in the manifest but missing from the backup") from None
        except OSError as exc:
            raise BackupError(f"{path}: cannot read it: {exc.strerror}") from None
        if size != entry.size:
            cut = " (truncated)" if size < entry.size else ""
            raise BackupError(f"{path}: {size} bytes, the manifest says {entry.size}{cut}")
        if lines != entry.lines or (None if last is None else line_hash(last)) != entry.last_line_hash:
            raise BackupError(f"{path}: its lines are not those the manifest names (line count or last line differ)")
        if digest != entry.sha256:
            raise BackupError(f"{path}: its bytes differ from the backup's (SHA-256 does not match the manifest)")
        if progress is not None and number % 1000 == 0:
            progress(number)
    listed = {entry.path for entry in entries}
    for relative in _files_under(folder):
        if relative not in listed and relative not in _OWN_NAMES:
            raise BackupError(f"{folder / relative}: in the backup but not named in its manifest")
    return entries


def root_files(root: Path) -> list[str]:
    """The files under a log root (empty folders do not count), relative."""
    return list(_files_under(root)) if root.is_dir() else []


def restore(source: Path, root: Path, progress: Progress | None = None) -> list[FileEntry]:
    """Check a backup against its manifest, then copy it into an empty log root; its entries.

    The caller holds the root's writer lock, so no service starts meanwhile.
    """
    if root_files(root):
        raise BackupError(
            f"{root}: the log root (SYNC_LOG_DIR) already holds files; restore only into an empty one"
            " (move this one aside first)"
        )
    entries = check_backup(source, progress)
    folders: set[Path] = {root}
    try:
        for entry in entries:
            target = root / entry.path
            folders.update(p for p in target.parents if p.is_relative_to(root))
            with open(source / entry.path, "rb") as handle:
                if _copy(handle, target, entry.path, 0, entry.size) != entry:  # changed since check_backup read it
                    raise BackupError(f"{source / entry.path}: it changed while being restored; restore again")
        for folder in sorted(folders, key=lambda p: -len(p.parts)):
            fsync_dir(folder)
    except OSError as exc:
        raise BackupError(
            f"{exc.filename or root}: restoring failed: {exc.strerror}; empty the log root before trying again"
        ) from None
    return entries
