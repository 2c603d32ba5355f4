"""The live stream's hub: what the projector applied, fanned out to the open streams of each user.

The projector calls `StreamHub.publish` after every commit (`Projector.on_applied`), so an
event reaches a stream only once the read models show it. `publish` never waits: each
stream has a bounded queue (STREAM_QUEUE_EVENTS messages); a stream whose queue is full
is marked overflowed, gets nothing more, and its handler ends it with `event: overflow`
(the client resumes by id). With no stream open for an event's user, publishing it costs
one dictionary lookup. The HTTP side (the handler, the messages' format, the resume from
the log files) is service/http/stream.py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from eventlog.events import SYNC
from projections.changes import Placed
from projections.recorder import Position


class Format(Protocol):
    """What the hub needs of the messages' format (service.http.stream.LiveText)."""

    def __call__(self, placed: Placed) -> bytes:
        """An applied event's SSE text (b"" for an event a stream does not show)."""
        ...

    def note(self, placed: Placed) -> None:
        """Take in an applied sync nobody is watching, so later device changes are judged against it."""
        ...


@dataclass(slots=True)
class StreamStats:
    """Counters of the live stream since start-up, read by metrics."""

    open: int = 0
    events_sent: int = 0
    clients_dropped: int = 0  # streams ended with `event: overflow`


@dataclass(eq=False, slots=True)
class Subscription:
    """One open stream: its filter and its queue of (event id, SSE text) not yet written."""

    user_id: int
    devices: frozenset[int] | None  # None: every device of the user
    limit: int
    queue: deque[tuple[str, bytes]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    closed: bool = False

    def offer(self, event_id: str, text: bytes) -> bool:
        """Queue one message; False (and overflowed from now on) if the queue is full."""
        if self.overflowed or self.closed:
            return False
        if len(self.queue) >= self.limit:
            self.overflowed = True
            self.queue.clear()
        else:
            self.queue.append((event_id, text))
        self.wakeup.set()
        return not self.overflowed

    def take(self) -> list[tuple[str, bytes]]:
        """Everything queued, oldest first; the queue is empty afterwards."""
        items = list(self.queue)
        self.queue.clear()
        self.wakeup.clear()
        return items

    def close(self) -> None:
        """End the stream (shutdown): its handler returns at its next wake-up."""
        self.closed = True
        self.wakeup.set()


class StreamHub:
    """The open streams by user, fed by the projector after each commit."""

    def __init__(
        self, positions: Callable[[], dict[int, Position]], format_event: Format, queue_events: int, stats: StreamStats
    ) -> None:
        """`positions`: how far the read models hold each device's log (Projector.positions; in cluster mode
        Node.positions, which knows of what other nodes applied)."""
        self._positions = positions
        self._format = format_event
        self.queue_events = queue_events
        self.stats = stats
        self._by_user: dict[int, set[Subscription]] = {}
        self._closed = False

    def subscribe(self, user_id: int, devices: Iterable[int] | None) -> tuple[Subscription, dict[int, Position]]:
        """A new stream, and where the read models stood for each device at that moment.

        Everything applied up to those positions was published before the subscription and
        is not queued for it; everything applied after is. Nothing awaits between the two,
        so a resume that reads the log up to those positions has neither a gap nor a repeat.
        """
        sub = Subscription(user_id, None if devices is None else frozenset(devices), self.queue_events)
        if self._closed:
            sub.close()
        self._by_user.setdefault(user_id, set()).add(sub)
        self.stats.open += 1
        return sub, self._positions()

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a stream (its handler ends)."""
        subs = self._by_user.get(sub.user_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self.stats.open -= 1
            if not subs:
                del self._by_user[sub.user_id]

    def publish(self, placed: list[Placed]) -> None:
        """The projector's `on_applied`: queue each applied event for the streams that show it.

        Events go out in id order (the order they were made in: eventlog.events.new_event_id);
        every sync is taken in (formatted, or only noted when nobody watches its user), so the
        device changes the stream reports are judged against every sync applied.
        """
        by_user = self._by_user
        if not by_user:  # no stream open: nothing to format or sort
            for p in placed:
                if p.event.type == SYNC:
                    self._format.note(p)
            return
        if len(placed) > 1:
            placed = sorted(placed, key=lambda p: p.event.id)
        for p in placed:
            event = p.event
            subs = by_user.get(event.user_id)
            if not subs:
                if event.type == SYNC:
                    self._format.note(p)
                continue
            text = self._format(p)
            if not text:
                continue
            for sub in list(subs):
                if (sub.devices is None or event.device_id in sub.devices) and not sub.offer(event.id, text):
                    self.stats.clients_dropped += 1
                    self.unsubscribe(sub)

    def close(self) -> None:
        """End every stream (the app shuts down); new ones end at once."""
        self._closed = True
        for subs in list(self._by_user.values()):
            for sub in list(subs):
                sub.close()
