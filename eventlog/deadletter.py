"""The dead-letter log: authenticated bodies that failed validation, kept with the reason."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from eventlog.events import format_instant, utc_now
from eventlog.files import append_durably

REJECTED_DIR = "rejected"


class RecordLog:
    """Appends JSON records durably as lines, one append at a time (side logs beside the event log)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def append(self, path: Path, record: dict[str, Any]) -> None:
        """Append `record` as one fsynced line to `path` (its folder made if need be)."""
        line = orjson.dumps(record) + b"\n"
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(None, append_durably, path, line)


class DeadLetters:
    """Appends one JSON line per rejected body to `<root>/rejected/rejected-YYYY-MM-DD.log`."""

    def __init__(self, root: Path) -> None:
        self.folder = root / REJECTED_DIR
        self._log = RecordLog()

    def path_for(self, moment: datetime) -> Path:
        """The file for the UTC day of `moment`."""
        return self.folder / f"rejected-{moment.strftime('%Y-%m-%d')}.log"

    async def keep(self, body: bytes, reason: str, remote: str | None = None) -> Path:
        """Durably keep a rejected body; returns the file it went to."""
        now = utc_now()
        record: dict[str, object] = {"receivedAt": format_instant(now), "reason": reason, "remote": remote}
        try:
            record["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            record["bodyBase64"] = base64.b64encode(body).decode()
        path = self.path_for(now)
        await self._log.append(path, record)
        return path
