"""The duplicate check asks the database only when a push could be a redelivery."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from projections.recorder import MemoryRecorder
from service.ingest import KnownPushes


class CountingRecorder(MemoryRecorder):
    def __init__(self, stored: dict[int, datetime]) -> None:
        super().__init__()
        self.stored_times = stored
        self.digest_queries: list[list[tuple[int, str]]] = []
        self.time_queries: list[set[int]] = []

    async def known_pushes(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], str]:
        self.digest_queries.append(sorted(keys))
        return {key: "stored-event" for key in keys if key[1] == "old-digest"}

    async def push_times(self, device_ids: Iterable[int]) -> dict[int, datetime]:
        self.time_queries.append(set(device_ids))
        return {d: self.stored_times[d] for d in device_ids if d in self.stored_times}


def at(hour: int) -> datetime:
    return datetime(2026, 5, 1, hour)


async def test_newer_pushes_are_answered_from_memory_once_the_device_is_known() -> None:
    recorder = CountingRecorder({1: at(10)})
    known = KnownPushes(recorder, caught_up=lambda device_id: True)
    assert await known.lookup((1, "old-digest"), at(10)) == "stored-event"  # as new as the newest: asked
    assert recorder.time_queries == [{1}] and recorder.digest_queries == [[(1, "old-digest")]]
    assert await known.lookup((1, "fresh"), at(11)) is None  # newer than anything stored
    assert await known.lookup((2, "fresh"), at(1)) is None  # device 2 has no stored push at all...
    assert recorder.time_queries == [{1}, {2}]  # ...which one query for its newest time tells
    assert recorder.digest_queries == [[(1, "old-digest")]]
    known.remember((1, "fresh"), "new-event", at(11))
    assert await known.lookup((1, "fresh"), at(11)) == "new-event"
    assert await known.lookup((1, "late"), at(10)) is None  # older than the newest: asked, not found
    assert recorder.digest_queries[-1] == [(1, "late")]
    assert await known.lookup((3, "x"), at(12)) is None and await known.lookup((3, "y"), at(13)) is None
    assert len(recorder.time_queries) == 3


async def test_a_device_still_catching_up_is_always_asked() -> None:
    recorder = CountingRecorder({})
    known = KnownPushes(recorder, caught_up=lambda device_id: False)  # its log is ahead of the database
    for hour in (10, 11):
        assert await known.lookup((1, f"digest-{hour}"), at(hour)) is None
    assert recorder.time_queries == [] and len(recorder.digest_queries) == 2
