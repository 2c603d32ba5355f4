"""A live log file replaced (`sed -i`: new file, rename) or removed behind the service.

The store's descriptor keeps writing to the old inode, which no one will read again.
Nothing may be acknowledged that is not in the file at the log path: a replacement
holding exactly the log so far gets the lines written again; any other replacement, a
removal or an edit in place refuses the device (503) until a restart.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from eventlog.events import PUSH, ZERO_HASH, decode_line, line_hash
from eventlog.files import device_days, log_path
from eventlog.store import Appended, LogStore, LogUnavailable
from eventlog.verify import verify
from service.http.keys import SERVICES
from tests.conftest import Clock, fixture_bytes

DAY = "2026-03-01"


@pytest.fixture
def clock():
    return Clock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
async def store(log_root, clock):
    flushes: list[int] = []
    store = LogStore(log_root, clock=clock, on_flush=lambda lines, size, seconds: flushes.append(lines))
    store.flushes = flushes  # type: ignore[attr-defined]
    await store.open()
    yield store
    await store.close()


async def append(store: LogStore, device_id: int, n: int) -> Appended:
    return await store.append(store.new_event(PUSH, device_id, 385, {"n": n, "deviceId": device_id}))


def sed(expression: str, path: Path) -> None:
    """Edit a file the way people do: GNU sed -i writes a new file and renames it over the old one."""
    before = path.stat().st_ino
    subprocess.run(["sed", "-i", expression, str(path)], check=True)
    assert path.stat().st_ino != before  # really replaced, not written in place


def kept(path: Path) -> Path:
    """Where the acknowledged content of a replaced or removed file is kept."""
    return path.with_name(path.name + ".replaced")


def chain_ok(lines: list[bytes], first_prev: str = ZERO_HASH) -> bool:
    prev = first_prev
    for line in lines:
        if decode_line(line)[1] != prev:
            return False
        prev = line_hash(line)
    return True


# ---------------------------------------------------------------- the store


async def test_a_replacement_that_changed_nothing_gets_the_lines_again(store, log_root, caplog):
    for n in range(1, 3):
        await append(store, 5, n)
    path = log_path(log_root, 5, DAY)
    sed("s/x/x/", path)  # matches nothing: the new file has the same bytes
    with caplog.at_level(logging.WARNING, "tlink.eventlog"):
        third = await append(store, 5, 3)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and line_hash(lines[2]) == third.hash and third.offset == len(b"".join(lines[:2])) + 2
    assert chain_ok(lines) and verify(log_root).ok
    assert str(path) in caplog.text and "written again" in caplog.text
    assert store.durable_end(5) == (DAY, path.stat().st_size)
    await append(store, 5, 4)  # the new file is the one written to from now on
    assert len(path.read_bytes().splitlines()) == 4 and verify(log_root).ok


@pytest.mark.parametrize(
    "expression",
    [
        's/"n":1/"n":7/',  # one byte of a middle line, same length: the last line still matches
        's/"n":2/"n":22/',  # the last line, longer
        "2d",  # an acknowledged line cut off
    ],
)
async def test_a_replacement_that_changed_the_log_refuses_the_device(store, log_root, caplog, expression):
    for n in range(1, 3):
        await append(store, 5, n)
    path = log_path(log_root, 5, DAY)
    durable = store.durable_end(5)
    acknowledged = path.read_bytes()
    sed(expression, path)
    edited = path.read_bytes()
    with caplog.at_level(logging.ERROR, "tlink.eventlog"), pytest.raises(LogUnavailable, match="replaced"):
        await append(store, 5, 3)
    assert path.read_bytes() == edited  # the file at the path is left as the editor made it
    assert str(path) in caplog.text and "refused" in caplog.text
    with pytest.raises(LogUnavailable, match="refused until a restart"):
        await append(store, 5, 4)  # and so it stays: the chain is not forked
    assert path.read_bytes() == edited
    assert store.durable_end(5) == durable  # nothing of the refused flush counts as written
    assert list(store.refused) == [5]
    assert kept(path).read_bytes() == acknowledged  # the old inode's log is not lost with our descriptor
    assert str(kept(path)) in caplog.text


async def test_a_removed_file_refuses_the_device_and_is_not_created_again(store, log_root):
    await append(store, 5, 1)
    path = log_path(log_root, 5, DAY)
    acknowledged = path.read_bytes()
    path.unlink()
    with pytest.raises(LogUnavailable, match="removed"):
        await append(store, 5, 2)
    assert not path.exists() and device_days(log_root, 5) == []
    assert kept(path).read_bytes() == acknowledged
    with pytest.raises(LogUnavailable):
        await append(store, 5, 3)
    assert not path.exists()


async def test_other_devices_of_the_same_flush_are_acknowledged(store, log_root):
    for device_id in (5, 6, 7):
        await append(store, device_id, 1)
    store.flushes.clear()
    sed("s/1/9/", log_path(log_root, 5, DAY))
    sed("s/x/x/", log_path(log_root, 7, DAY))
    results = await asyncio.gather(
        *(append(store, d, n) for n in (2, 3) for d in (5, 6, 7)),
        return_exceptions=True,
    )
    assert store.flushes == [4]  # one flush: 6's and 7's lines acknowledged, 5's not
    assert [isinstance(r, LogUnavailable) for r in results] == [True, False, False] * 2
    for device_id in (6, 7):
        lines = log_path(log_root, device_id, DAY).read_bytes().splitlines()
        assert len(lines) == 3 and chain_ok(lines)
        assert [line_hash(line) for line in lines[1:]] == [r.hash for r in results if isinstance(r, Appended)
                                                           and r.event.device_id == device_id]  # fmt: skip
    assert len(log_path(log_root, 5, DAY).read_bytes().splitlines()) == 1


async def test_the_staged_lines_of_a_refused_device_are_never_declared_durable(store, log_root):
    await append(store, 5, 1)
    await append(store, 6, 1)
    sed("s/1/9/", log_path(log_root, 5, DAY))
    queued = [store.queue(store.new_event(PUSH, device_id, 385, {"n": 2})) for device_id in (5, 6)]
    results = await asyncio.gather(*(q.durable for q in queued), return_exceptions=True)
    assert all(q.placed.done() and q.placed.exception() is None for q in queued)  # both lines got their place
    assert isinstance(results[0], LogUnavailable) and isinstance(results[1], Appended)  # only 6's is durable
    assert store.durable_end(6) == (DAY, log_path(log_root, 6, DAY).stat().st_size)


async def test_a_refused_device_across_midnight_keeps_no_line_of_the_flush(store, log_root, clock):
    await append(store, 5, 1)
    first = log_path(log_root, 5, DAY)
    sed("s/1/9/", first)
    edited = first.read_bytes()
    late = store.new_event(PUSH, 5, 385, {"n": 2})
    clock.now += timedelta(days=1)
    early = store.new_event(PUSH, 5, 385, {"n": 3})  # one flush writes both days' files
    results = await asyncio.gather(store.append(late), store.append(early), return_exceptions=True)
    assert all(isinstance(r, LogUnavailable) for r in results)
    assert first.read_bytes() == edited
    assert log_path(log_root, 5, "2026-03-02").read_bytes() == b""  # our new file: its lines cut off again


async def test_a_replacement_and_a_new_days_file_in_one_flush(store, log_root, clock):
    await append(store, 5, 1)
    sed("s/x/x/", log_path(log_root, 5, DAY))
    late = store.new_event(PUSH, 5, 385, {"n": 2})
    clock.now += timedelta(days=1)
    early = store.new_event(PUSH, 5, 385, {"n": 3})
    await asyncio.gather(store.append(late), store.append(early))
    assert [len(log_path(log_root, 5, d).read_bytes().splitlines()) for d in device_days(log_root, 5)] == [2, 1]
    assert verify(log_root).ok


async def test_an_edit_in_place_refuses_the_device(store, log_root):
    await append(store, 5, 1)
    path = log_path(log_root, 5, DAY)
    with open(path, "ab") as handle:  # same inode, but not only our lines any more
        handle.write(b'{"note":"added by hand"}\n')
    with pytest.raises(LogUnavailable, match="changed in place"):
        await append(store, 5, 2)
    assert b"added by hand" in path.read_bytes()  # what is not ours is not cut


async def test_an_older_copy_put_back_is_refused_as_missing_acknowledged_lines(store, log_root, tmp_path):
    await append(store, 5, 1)
    path = log_path(log_root, 5, DAY)
    shutil.copy(path, tmp_path / "copy")
    await append(store, 5, 2)  # acknowledged: on disk at the path
    os.replace(tmp_path / "copy", path)
    with pytest.raises(LogUnavailable, match="acknowledged lines are missing"):
        await append(store, 5, 3)
    assert len(kept(path).read_bytes().splitlines()) == 2  # both acknowledged lines, not the refused one


async def test_a_file_moved_away_is_not_copied(store, log_root, tmp_path):
    await append(store, 5, 1)
    path = log_path(log_root, 5, DAY)
    path.rename(tmp_path / "moved")
    with pytest.raises(LogUnavailable, match="still exists under another name"):
        await append(store, 5, 2)
    assert len((tmp_path / "moved").read_bytes().splitlines()) == 1  # the refused line cut off it again
    assert not kept(path).exists()


async def test_a_failed_flush_after_a_replacement_never_truncates_the_new_file(store, log_root, monkeypatch):
    await append(store, 5, 1)
    await append(store, 5, 2)
    path = log_path(log_root, 5, DAY)
    sed("s/x/x/", path)
    copy_bytes = path.read_bytes()

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(LogUnavailable, match="Input/output error"):
        await append(store, 5, 3)
    monkeypatch.undo()
    assert path.read_bytes() == copy_bytes  # the roll-back cut the old inode, not this file
    await append(store, 5, 4)  # then the replacement is noticed and taken over
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and chain_ok(lines) and verify(log_root).ok


async def test_a_restart_reads_the_chain_from_the_file_at_the_path(log_root, clock):
    store = LogStore(log_root, clock=clock)
    await store.open()
    await append(store, 5, 1)
    path = log_path(log_root, 5, DAY)
    sed("s/1/9/", path)
    with pytest.raises(LogUnavailable):
        await append(store, 5, 2)
    await store.close()
    again = LogStore(log_root, clock=clock)
    await again.open()
    appended = await append(again, 5, 3)
    await again.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and appended.prev == line_hash(lines[0])


# ---------------------------------------------------------------- end to end

SAMPLE = orjson.loads(fixture_bytes("sample_push.json"))


def upload(i: int, device_id: int = 2864) -> bytes:
    body = copy.deepcopy(SAMPLE)
    body["deviceId"] = device_id
    body["time"] = f"2019-05-10 10:00:{i:02d}"
    for entry in body["sensorsDates"]:
        entry["times"], entry["value"] = body["time"][11:], f"{i}.5"
        entry["sensorsId"] = device_id * 10 + entry["sensorsId"] % 10
    return orjson.dumps(body)


async def post(client, body: bytes) -> tuple[int, dict]:
    resp = await client.post("/api/webhooks/tlink", data=body)
    return resp.status, await resp.json()


async def latest_value(client, device_id: int = 2864) -> str | None:
    resp = await client.get(f"/api/users/385/devices/{device_id}/latest")
    assert resp.status == 200
    latest = (await resp.json())["sensors"][0]["latest"]
    return None if latest is None else latest["value"]


async def events_in_db(client, device_id: int = 2864) -> list[str]:
    rows = await client.app[SERVICES].db.fetchall("SELECT event_id FROM events WHERE device_id = %s", (device_id,))
    return sorted(str(row[0]) for row in rows)


def today_file(log_root: Path, device_id: int = 2864) -> Path:
    [day] = device_days(log_root, device_id)
    return log_path(log_root, device_id, day)


async def wait_for(predicate, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_http_a_no_op_sed_on_todays_file_keeps_pushes_acknowledged(app_client, log_root):
    client = await app_client()
    assert (await post(client, upload(1)))[0] == 200
    path = today_file(log_root)
    sed("s/x/x/", path)
    status, answer = await post(client, upload(2))
    assert status == 200 and answer["projected"] is True
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line)["id"] for line in lines][-1] == answer["eventId"] and chain_ok(lines)
    assert await latest_value(client) == "2.5"
    assert (await post(client, upload(3)))[0] == 200
    assert len(path.read_bytes().splitlines()) == 3 and verify(log_root).ok


async def test_http_a_changing_sed_is_503_and_nothing_unwritten_is_acknowledged(app_client, log_root):
    client = await app_client()
    status, first = await post(client, upload(1))
    assert status == 200
    path = today_file(log_root)
    sed("s/1.5/7.5/g", path)
    edited = path.read_bytes()
    status, answer = await post(client, upload(2))
    assert status == 503 and "event log" in answer["error"]
    assert path.read_bytes() == edited
    assert await latest_value(client) == "1.5"  # the refused push is in no read model either
    assert await events_in_db(client) == [first["eventId"]]
    assert (await post(client, upload(3)))[0] == 503  # until a restart
    assert (await post(client, upload(4, device_id=2865)))[0] == 200  # other devices go on

    async def other_projected() -> bool:
        return await latest_value(client, 2865) == "4.5"

    await wait_for(other_projected)


async def test_http_a_removed_file_is_503(app_client, log_root):
    client = await app_client()
    assert (await post(client, upload(1)))[0] == 200
    path = today_file(log_root)
    path.unlink()
    status, _ = await post(client, upload(2))
    assert status == 503
    assert not path.exists() and device_days(log_root, 2864) == []
    assert await latest_value(client) == "1.5"
    [line] = kept(path).read_bytes().splitlines()  # the acknowledged push is still on disk
    assert orjson.loads(line)["body"] == orjson.loads(upload(1))


async def test_http_a_refused_device_in_a_shared_flush_leaves_the_others_acknowledged_and_projected(
    app_client, log_root
):
    client = await app_client()
    for device_id in (2864, 2865):
        assert (await post(client, upload(1, device_id)))[0] == 200
    services = client.app[SERVICES]
    store, ingestor, projector = services.store, services.ingestor, services.projector
    flushes: list[int] = []
    flush = store._flush

    def counted(pending):
        flushes.append(len(pending))
        return flush(pending)

    store._flush = counted  # type: ignore[method-assign]
    sed("s/1.5/7.5/g", today_file(log_root, 2864))
    refused, kept = await asyncio.gather(
        ingestor.push(orjson.loads(upload(2, 2864))),
        ingestor.push(orjson.loads(upload(2, 2865))),
        return_exceptions=True,
    )
    assert flushes == [2]  # both lines were in one flush
    assert isinstance(refused, LogUnavailable)
    assert kept.event_id is not None and kept.duplicate is False  # acknowledged (its projection was rolled back)
    lines = today_file(log_root, 2865).read_bytes().splitlines()
    assert orjson.loads(lines[-1])["id"] == kept.event_id

    async def projected() -> bool:
        return kept.event_id in await events_in_db(client, 2865) and projector.caught_up(2865)

    await wait_for(projected)  # the projector read it back from the log
    assert await latest_value(client, 2865) == "2.5"
    assert len(await events_in_db(client, 2864)) == 1 and await latest_value(client, 2864) == "1.5"
