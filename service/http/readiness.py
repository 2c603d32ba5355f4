"""The readiness checks behind /api/ready: log root, database, projection; each failure logged once when it changes."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eventlog.files import log_path
from projections.db import Database, DatabaseError, DatabaseUnavailable
from projections.log_lines import DeviceStop
from projections.projector import Projector
from service.http.schemas import BusCheck, Check, PartitionLag, ProjectionCheck, StoppedDevice

PING_TIMEOUT = 2.0

if TYPE_CHECKING:
    from service.cluster.node import Node

log = logging.getLogger("tlink.health")

DATABASE_UNREACHABLE = "cannot connect (the service log has the details)"
DATABASE_ERROR = "the test query failed (the service log has the details)"
PROJECTOR_FAILED = "the projector stopped on an error (the service log has it)"
STOP_NOT_AN_EVENT = "not a valid event line (the service log has the details)"
STOP_NOT_APPLIED = "the line cannot be applied (the service log has the details)"


@dataclass(slots=True)
class ReadyNotes:
    """The failed checks' details last logged, so that each is logged once when it changes."""

    logged: dict[str, str | None] = field(default_factory=dict)

    def note(self, check: str, detail: str | None) -> None:
        """Log `detail` (None: the check passes) if it differs from the one last logged for `check`."""
        if self.logged.get(check) == detail:
            return
        if detail is not None:
            log.warning("readiness check %s failed: %s", check, detail, extra={"check": check})
        elif self.logged.get(check) is not None:
            log.info("readiness check %s passes again", check, extra={"check": check})
        self.logged[check] = detail


def log_root_check(root: Path, detailed: bool = True, notes: ReadyNotes | None = None) -> Check:
    """The log root exists and this process may write to it (`detailed`: naming the folder).

    `notes` (the log) always gets the detail naming the folder.
    """
    problem = None
    if not root.is_dir():
        problem = "does not exist"
    elif not os.access(root, os.W_OK):
        problem = "is not writable"
    if notes is not None:
        notes.note("logRoot", None if problem is None else f"log root {root} {problem}")
    if problem is None:
        return Check(ok=True)
    return Check(ok=False, detail=f"log root {root} {problem}" if detailed else f"log root {problem}")


async def database_check(db: Database, notes: ReadyNotes | None = None) -> Check:
    """A trivial query answers within PING_TIMEOUT seconds.

    The detail is a fixed sentence; the database's own message goes to `notes` (the log).
    """
    logged: str | None = None
    check = Check(ok=True)
    try:
        await asyncio.wait_for(db.ping(), PING_TIMEOUT)
    except TimeoutError:
        check = Check(ok=False, detail=f"database did not answer within {PING_TIMEOUT:g} s")
        logged = check.detail
    except DatabaseUnavailable as exc:
        check, logged = Check(ok=False, detail=DATABASE_UNREACHABLE), f"cannot connect: {exc}"
    except DatabaseError as exc:
        check, logged = Check(ok=False, detail=DATABASE_ERROR), f"the test query failed: {exc}"
    if notes is not None:
        notes.note("database", logged)
    return check


def _stop_reason(stop: DeviceStop, detailed: bool) -> str:
    if detailed:
        return stop.reason
    return STOP_NOT_AN_EVENT if stop.event_id is None else STOP_NOT_APPLIED


def projection_check(projector: Projector, detailed: bool = True) -> ProjectionCheck:
    """The projector runs, and neither devices nor queued events wait for more than a batch.

    Without `detailed`, the projector's error and the devices' stop reasons are fixed sentences.
    """
    failed = None if projector.failed is None else str(projector.failed) or type(projector.failed).__name__
    if failed is not None and not detailed:
        failed = PROJECTOR_FAILED
    behind, queued = projector.behind, projector.queued
    ok = failed is None and behind == 0 and queued <= projector.batch_limit
    stopped = [
        StoppedDevice(
            deviceId=stop.device_id,
            file=str(log_path(projector.root, stop.device_id, stop.day).relative_to(projector.root)),
            line=stop.line_no,
            eventId=stop.event_id,
            reason=_stop_reason(stop, detailed),
        )
        for stop in sorted(projector.stopped.values(), key=lambda stop: stop.device_id)
    ]
    return ProjectionCheck(ok=ok, behindDevices=behind, queuedEvents=queued, failed=failed, stoppedDevices=stopped)


def bus_check(node: Node, detailed: bool = True) -> BusCheck:
    """The bus connection and the partitions this node writes, with their lag (`detailed`: naming the server)."""
    bus = node.bus
    partitions = [PartitionLag(partition=p.partition, lag=p.lag) for p in node.partitions()]
    return BusCheck(ok=bus.connected, nodeId=node.node_id, role=node.role, server=bus.server if detailed else None,
                    liveNodes=node.leases.live_nodes, partitions=partitions)  # fmt: skip


def reasons(log_root: Check, database: Check, projection: ProjectionCheck, bus: BusCheck | None = None) -> list[str]:
    """Why the service is not ready, one sentence a failed check."""
    found = []
    if bus is not None and not bus.ok:
        found.append("bus: not connected to any NATS server of BUS_URL")
    if not log_root.ok:
        found.append(f"event log: {log_root.detail}")
    if not database.ok:
        found.append(f"database unreachable: {database.detail}")
    if projection.failed is not None:
        found.append(f"projector stopped: {projection.failed}")
    elif projection.behindDevices:
        found.append(f"read models catching up: {projection.behindDevices} device(s) behind the log")
    elif not projection.ok:
        found.append(f"read models lagging: {projection.queuedEvents} events queued")
    return found
