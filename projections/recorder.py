"""Where projected rows go: the recorder interface and its in-memory fake.

A recorder writes one batch (events rows, read models and the per-file positions)
atomically, so a restart resumes exactly where the last committed batch ended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from projections.changes import (
    BlockRow,
    Changes,
    DeviceMetaRow,
    DevicePushRow,
    FileRow,
    ReadingKey,
    SensorKey,
    SensorLatestRow,
    SensorMetaRow,
    UserRow,
    merge_block,
    merge_device_meta,
    merge_device_push,
    merge_file,
    merge_sensor_latest,
    merge_sensor_meta,
    merge_user,
)
from projections.db import DatabaseUnavailable
from projections.errors import ProjectionError
from projections.readings import Reading

K = TypeVar("K")
R = TypeVar("R")


def _merge_into(target: dict[K, R], rows: dict[K, R], merge: Callable[[R | None, R], R]) -> None:
    for key, row in rows.items():
        target[key] = merge(target.get(key), row)


@dataclass(frozen=True, slots=True)
class Position:
    """How far one device's log has been applied: its newest applied file and line."""

    day: str
    line_count: int
    byte_count: int
    last_hash: str


class Recorder(ABC):
    """Storage of the projection."""

    @abstractmethod
    async def record(self, changes: Changes, before_commit: Awaitable[object] | None = None) -> None:
        """Write a batch atomically (all or nothing); commit only once `before_commit` is done.

        If `before_commit` raises, nothing is committed and the error propagates.
        """

    @abstractmethod
    async def positions(self) -> dict[int, Position]:
        """Each device's newest applied file and line."""

    @abstractmethod
    async def known_pushes(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], str]:
        """Which (device id, body digest) pairs are already recorded, with their event ids."""

    @abstractmethod
    async def push_times(self, device_ids: Iterable[int]) -> dict[int, datetime]:
        """The newest upload time (`time` of a push) recorded for each of these devices that has one."""

    @abstractmethod
    async def sensor_ids(self, device_id: int) -> set[int]:
        """The sensors the read models hold for this device."""

    @abstractmethod
    async def reset(self) -> None:
        """Empty the events table, the read models and the positions (for replay)."""


class MemoryRecorder(Recorder):
    """A dict-backed recorder with the same rules, for fast unit tests."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[int, str | None, str, int]] = {}
        self.users: dict[int, UserRow] = {}
        self.device_pushes: dict[int, DevicePushRow] = {}
        self.device_meta: dict[int, DeviceMetaRow] = {}
        self.sensor_latest: dict[SensorKey, SensorLatestRow] = {}
        self.sensor_meta: dict[SensorKey, SensorMetaRow] = {}
        self.readings: dict[ReadingKey, tuple[int, Reading, str]] = {}
        self.blocks: dict[tuple[int, str, int], BlockRow] = {}
        self.files: dict[tuple[int, str], FileRow] = {}
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise DatabaseUnavailable("memory recorder switched off")

    async def record(self, changes: Changes, before_commit: Awaitable[object] | None = None) -> None:
        self._check()
        if before_commit is not None:
            await before_commit
        for placed in changes.events:
            event = placed.event
            if event.id in self.events:
                raise ProjectionError(f"event {event.id} recorded twice")
            self.events[event.id] = (event.device_id, changes.digests.get(event.id), placed.day, placed.line_no)
        _merge_into(self.users, changes.users, merge_user)
        _merge_into(self.device_pushes, changes.device_pushes, merge_device_push)
        _merge_into(self.device_meta, changes.device_meta, merge_device_meta)
        _merge_into(self.sensor_latest, changes.sensor_latest, merge_sensor_latest)
        _merge_into(self.sensor_meta, changes.sensor_meta, merge_sensor_meta)
        _merge_into(self.blocks, changes.blocks, merge_block)
        _merge_into(self.files, changes.files, merge_file)
        for key, value in changes.readings.items():
            self.readings.setdefault(key, value)

    async def positions(self) -> dict[int, Position]:
        self._check()
        result: dict[int, Position] = {}
        for (device_id, day), row in sorted(self.files.items()):
            result[device_id] = Position(day, row.line_count, row.byte_count, row.last_hash)
        return result

    async def known_pushes(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], str]:
        self._check()
        stored = {(device_id, digest): event_id for event_id, (device_id, digest, _, _) in self.events.items()}
        return {key: stored[key] for key in keys if key in stored}

    async def push_times(self, device_ids: Iterable[int]) -> dict[int, datetime]:
        self._check()
        rows = (self.device_pushes.get(device_id) for device_id in device_ids)
        return {row.device_id: row.last_push_time for row in rows if row is not None and row.last_push_time}

    async def sensor_ids(self, device_id: int) -> set[int]:
        self._check()
        return {s for d, s in (*self.sensor_latest, *self.sensor_meta) if d == device_id}

    async def reset(self) -> None:
        self._check()
        self.__init__()  # type: ignore[misc]
