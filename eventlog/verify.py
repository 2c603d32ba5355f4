"""Checking the logs: every hash chain, and each file's last line against the database."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.events import ZERO_HASH, BadLine, decode_line, line_hash
from eventlog.files import device_days, device_ids, first_line, log_path, read_lines, side_files
from eventlog.foreign import FOREIGN_SUFFIX, describe_line, foreign_reason
from eventlog.recovery import quarantine_path


@dataclass(frozen=True, slots=True)
class RecordedFile:
    """What the database says about one file: lines applied and the last one's hash."""

    line_count: int
    last_hash: str
    pruned: bool = False


@dataclass(slots=True)
class Report:
    """The outcome of a verification: the first failure, if any, and counts."""

    files: int = 0
    lines: int = 0
    failure: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed."""
        return self.failure is None


Progress = Callable[[int], None]


def verify(
    root: Path,
    recorded: dict[tuple[int, str], RecordedFile] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Check every device's chain; stop at the first failure and name its file and line.

    A device's oldest file must chain to the last hash the database recorded for the
    file before it (pruned by retention). With no such record (`recorded` None: no
    database; or a database rebuilt after pruning) it may begin anywhere, which is noted
    unless it begins at zeros.

    Files start-up set aside (`.foreign`, `.torn`) are not part of any chain; each is
    named in the notes.
    """
    report = Report()
    by_device: dict[int, list[tuple[str, RecordedFile]]] = {}
    for (device_id, day), rec in (recorded or {}).items():
        by_device.setdefault(device_id, []).append((day, rec))
    listed: set[tuple[int, str]] = set()  # (device, day) of every file the walk found
    for device_id in device_ids(root):
        earlier = None if recorded is None else sorted(by_device.get(device_id, []))
        failure = _verify_device(root, device_id, recorded, earlier, report, progress, listed)
        if failure is not None:
            report.failure = failure
            return report
    for (device_id, day), rec in sorted((recorded or {}).items()):
        path = log_path(root, device_id, day)
        if not rec.pruned and (device_id, day) not in listed:
            report.failure = f"{path}: missing, but the database recorded {rec.line_count} lines" + _cut_hint(path)
            return report
    return report


def _verify_device(
    root: Path,
    device_id: int,
    recorded: dict[tuple[int, str], RecordedFile] | None,
    device_records: list[tuple[str, RecordedFile]] | None,
    report: Report,
    progress: Progress | None,
    listed: set[tuple[int, str]],
) -> str | None:
    prev = None  # None: the oldest kept file may chain to a pruned one
    days = device_days(root, device_id)
    listed.update((device_id, day) for day in days)
    report.notes.extend(_side_note(path) for path in side_files(root, device_id))
    for day in days:
        path = log_path(root, device_id, day)
        allowed = (prev,) if prev is not None else _anchor(device_records, day)
        rec = (recorded or {}).get((device_id, day))
        count, last, at_recorded = 0, ZERO_HASH, None
        for line_no, digest, problem in _check_lines(path, device_id, day, allowed, report.notes):
            if problem is not None:
                return f"{path}:{line_no}: {problem}"
            count, last = line_no, digest
            if rec is not None and line_no == rec.line_count:
                at_recorded = last
            report.lines += 1
            if progress is not None and report.lines % 10_000 == 0:
                progress(report.lines)
        report.files += 1
        failure = _check_recorded(path, rec, count, at_recorded)
        if failure is not None:
            return failure + _cut_hint(path)
        if rec is not None and count > rec.line_count:
            report.notes.append(f"{path}: {count - rec.line_count} lines not yet applied to the database")
        if count:
            prev = last
    return None


def _anchor(device_records: list[tuple[str, RecordedFile]] | None, day: str) -> tuple[str, ...] | None:
    """The hashes a device's oldest kept file may chain to (its records sorted by day); None when nothing is known."""
    earlier = [rec for d, rec in device_records or [] if d < day]
    if not earlier:
        return None
    newest = earlier[-1]
    if newest.pruned:
        # Retention may have emptied the device's folder; a store started after that
        # begins a new chain, since the pruned hash lives only in the database.
        return (newest.last_hash, ZERO_HASH)
    return (newest.last_hash,)


def _check_lines(
    path: Path, device_id: int, day: str, allowed: Collection[str] | None, notes: list[str]
) -> Iterator[tuple[int, str, str | None]]:
    """Each line's number, hash and problem (digest "" with a problem, which ends the walk).

    `allowed` None: nothing is known before the file; a first line not starting at
    zeros is noted in `notes`.
    """
    size = path.stat().st_size
    end, line_no = 0, 0
    for line in read_lines(path, day=day):
        end, line_no = line.end, line.line_no
        try:
            event, line_prev = decode_line(line.raw)
        except BadLine:
            yield line.line_no, "", _bad_line(line.raw, line.line_no, device_id, path)
            return
        if allowed is None and line_prev != ZERO_HASH:
            notes.append(
                f"{path}: begins mid-chain; the files before it are gone and not recorded as pruned"
                " (pruned before the database was rebuilt, or removed)"
            )
        if allowed is not None and line_prev not in allowed:
            yield line.line_no, "", "hash chain broken: prev does not match the line before (changed or removed)"
            return
        if event.device_id != device_id:
            hint = _foreign_hint(line.raw, line.line_no, device_id, path)
            yield line.line_no, "", f"line belongs to device {event.device_id}{hint}"
            return
        digest = line_hash(line.raw)
        allowed = (digest,)
        yield line.line_no, digest, None
    if end != size:
        yield line_no + 1, "", f"unterminated last line ({size - end} bytes without a newline)"


def _bad_line(raw: bytes, line_no: int, device_id: int, path: Path) -> str:
    return f"not a valid event line: {describe_line(raw)}" + _foreign_hint(raw, line_no, device_id, path)


def _foreign_hint(raw: bytes, line_no: int, device_id: int, path: Path) -> str:
    """For a first line that makes the file foreign: what start-up does with it."""
    if line_no != 1 or foreign_reason(raw, device_id) is None:
        return ""
    return f"; this is not a log of this service: start-up moves it aside to {path.name}{FOREIGN_SUFFIX}"


def _side_note(path: Path) -> str:
    """A note naming a file start-up set aside, and what it holds."""
    log_name = path.name[: path.name.index(".log") + 4]
    size = path.stat().st_size
    if path.name.startswith(quarantine_path(Path(log_name)).name):
        return f"{path}: {size} bytes start-up cut off {log_name} as a torn tail; not part of the log"
    if path.name.startswith(log_name + ".replaced"):
        return (
            f"{path}: {size} bytes the service kept of {log_name} when that live file was replaced or removed"
            " behind it; not part of the log"
        )
    first = first_line(path)
    what = "it is empty" if first is None else f"it begins with {describe_line(first[0])}"
    return f"{path}: a foreign file ({size} bytes) start-up moved aside from {log_name}; not part of the log: {what}"


def _cut_hint(path: Path) -> str:
    """Where what is missing of a file may be: the files start-up set aside next to it."""
    torn, foreign = quarantine_path(path), path.with_name(path.name + FOREIGN_SUFFIX)
    if torn.exists():
        return f" ({torn.name} holds what start-up cut off this file as a torn tail)"
    if foreign.exists():
        return f" ({foreign.name} is a file of that name start-up moved aside as foreign)"
    return ""


def _check_recorded(path: Path, rec: RecordedFile | None, count: int, at_recorded: str | None) -> str | None:
    if rec is None:
        return None
    if count < rec.line_count:
        gone = f"line {count + 1} is" if count + 1 == rec.line_count else f"lines {count + 1} to {rec.line_count} are"
        return f"{path}: has {count} lines but the database recorded {rec.line_count}: {gone} missing (cut off the end)"
    if at_recorded != rec.last_hash:
        return f"{path}:{rec.line_count}: line does not match the hash recorded in the database"
    return None
