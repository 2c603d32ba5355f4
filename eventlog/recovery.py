"""Start-up repair: torn tails are cut off, foreign files are moved aside, the rest is kept.

Two things can be in a device's folder that are not its log:

- a torn tail: what a crash or power loss left of the last write to the newest file
  (the start of a line without its newline, or blocks of zeros). The valid prefix is
  kept, everything from the first torn line on is appended to `<name>.torn`.
- a foreign file: a log file whose first complete line is not an event of the device
  (an old file of the original Flask service, a stray file). It is renamed to
  `<name>.foreign`, whole; the device's chain goes on from its previous real file.

Only the newest file is ever appended to, so only its tail is read (a window from the
end); of the other files only the first line is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from eventlog.events import BadLine, decode_line
from eventlog.files import device_days, device_ids, first_line, fsync_dir, log_path
from eventlog.foreign import FOREIGN_SUFFIX, describe_line, foreign_reason

# A crash can leave at most the lines of one unfinished write; looking further back
# would only find lines that were acknowledged and fsynced.
MAX_TORN_LINES = 10_000

TORN = "torn"
FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class Repair:
    """What start-up moved out of a log file, where it went, and why.

    kind TORN: a torn tail cut off `path` (which keeps `kept_bytes`) and appended to
    `quarantine`. kind FOREIGN: the whole of `path` (`moved_bytes`) renamed to
    `quarantine` because it is not a log of this service; `kept_bytes` is 0.
    """

    path: Path
    quarantine: Path
    kept_bytes: int
    moved_bytes: int
    kind: str = TORN
    reason: str = ""

    @property
    def message(self) -> str:
        """One line for the operator, naming the file and the reason."""
        if self.kind == FOREIGN:
            return (
                f"foreign file moved aside: {self.path} is not a log of this service ({self.reason});"
                f" renamed to {self.quarantine.name}, which is never read as log"
            )
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"torn log tail moved aside: {self.moved_bytes} bytes from byte {self.kept_bytes} of {self.path}"
            f" appended to {self.quarantine.name}{why}"
        )


def quarantine_path(path: Path) -> Path:
    """Where torn bytes of a log file are kept: next to it, never read as log."""
    return path.with_name(path.name + ".torn")


def foreign_path(path: Path) -> Path:
    """A free name next to a foreign file to rename it to: `<name>.foreign` (then `.foreign.2`, ...)."""
    target = path.with_name(path.name + FOREIGN_SUFFIX)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{FOREIGN_SUFFIX}.{n}")
    return target


def repair_all(root: Path) -> list[Repair]:
    """Repair every device folder under the root."""
    return [r for d in device_ids(root) for r in repair_device(root, d)]


def repair_device(root: Path, device_id: int) -> list[Repair]:
    """Move the device's foreign files aside, then cut a torn tail off its newest file."""
    repairs = []
    days = []
    for day in device_days(root, device_id):
        moved = move_if_foreign(log_path(root, device_id, day), device_id)
        if moved is not None:
            repairs.append(moved)
        else:
            days.append(day)
    if days:
        torn = cut_torn_tail(log_path(root, device_id, days[-1]))
        if torn is not None:
            repairs.append(torn)
    return repairs


def move_if_foreign(path: Path, device_id: int) -> Repair | None:
    """Rename the file to `<name>.foreign` if its first line says it is not the device's log."""
    first = first_line(path)
    if first is None:
        return None
    reason = foreign_reason(first[0], device_id, terminated=first[1])
    if reason is None:
        return None
    size = path.stat().st_size
    target = foreign_path(path)
    os.rename(path, target)
    fsync_dir(path.parent)
    return Repair(path=path, quarantine=target, kept_bytes=0, moved_bytes=size, kind=FOREIGN, reason=reason)


def cut_torn_tail(path: Path) -> Repair | None:
    """Keep the file's valid prefix; append what follows its first torn line to `<name>.torn`."""
    offset, data = _tail(path)
    keep = offset + _good_length(data)
    size = offset + len(data)
    if keep == size:
        return None
    cut = data[keep - offset :]
    target = quarantine_path(path)
    with open(target, "ab") as out:
        out.write(cut + (b"" if cut.endswith(b"\n") else b"\n"))
        out.flush()
        os.fsync(out.fileno())
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        os.fsync(handle.fileno())
    return Repair(path=path, quarantine=target, kept_bytes=keep, moved_bytes=size - keep, reason=_torn_reason(cut))


def _tail(path: Path, size: int = 1 << 20) -> tuple[int, bytes]:
    """(offset, bytes) of the end of a file, from a line start, long enough to find its torn part.

    Reading only the tail keeps start-up from reading every device's whole file. The
    window begins at the start of a line, so its first line is checked whole; it grows
    while that first line is already bad (the damage may begin before it).
    """
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        while True:
            offset = _line_start(handle, max(0, end - size))
            handle.seek(offset)
            data = handle.read(end - offset)
            if offset == 0 or _good_length(data) > 0:
                return offset, data
            size = max(size * 2, end - offset + 1)


def _line_start(handle: BinaryIO, pos: int, step: int = 8192) -> int:
    """The offset of the start of the line that holds byte `pos`."""
    while pos > 0:
        start = max(0, pos - step)
        handle.seek(start)
        stop = handle.read(pos - start).rfind(b"\n")
        if stop >= 0:
            return start + stop + 1
        pos = start
    return 0


def _good_length(data: bytes) -> int:
    """Length of the valid prefix of `data` (which begins at a line start): its lines before the first torn one.

    Torn lines are the unterminated end, the first line holding a NUL byte (a zeroed
    block: nothing after it is trusted, even valid lines) and complete lines at the end
    of what is left that are not events.
    """
    keep = data.rfind(b"\n") + 1
    zero = data.find(b"\x00", 0, keep)
    if zero >= 0:
        keep = data.rfind(b"\n", 0, zero) + 1
    for _ in range(MAX_TORN_LINES):
        if keep == 0:
            return 0
        start = data.rfind(b"\n", 0, keep - 1) + 1
        try:
            decode_line(data[start : keep - 1])
            return keep
        except BadLine:
            keep = start
    return keep


def _torn_reason(cut: bytes) -> str:
    stop = cut.find(b"\n")
    if stop >= 0:
        return f"it begins with {describe_line(cut[:stop])}"
    zeros = cut.count(0)
    held = f", {zeros} of them NUL bytes" if zeros else ""
    return f"an unterminated line of {len(cut)} bytes{held}: a write cut short by a crash or power loss"
