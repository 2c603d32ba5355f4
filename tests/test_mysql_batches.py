"""A projection batch on MySQL/MariaDB is all or nothing, as a compound statement (MariaDB) or a
multi-statement (what MySQL gets), and commits only once the log says its lines are durable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from eventlog.store import LogUnavailable
from projections.db import DatabaseError, Literals, MysqlDatabase, connect, transaction_text
from tests.conftest import mysql_database_url

pytestmark = pytest.mark.mysql

INSERT = "INSERT INTO t (id, note) VALUES (%s, %s)"


@pytest.fixture(params=[True, False], ids=["compound", "multi-statement"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[MysqlDatabase]:
    urls = mysql_database_url()
    database = await connect(next(urls))
    assert isinstance(database, MysqlDatabase)
    await database.execute_script("CREATE TABLE t (id INT PRIMARY KEY, note VARCHAR(20) NULL)")
    database.compound = request.param
    yield database
    await database.close()
    for _ in urls:  # drop the database
        pass


async def notes(db: MysqlDatabase) -> list[tuple[int, str | None]]:
    return [(int(r[0]), r[1]) for r in await db.fetchall("SELECT id, note FROM t ORDER BY id")]


def test_the_two_forms_of_a_transaction() -> None:
    statements = ["INSERT INTO t VALUES (1,'a')", "INSERT INTO t VALUES (2,'b')"]
    assert transaction_text(statements, compound=False) == (
        "BEGIN;\nINSERT INTO t VALUES (1,'a');\nINSERT INTO t VALUES (2,'b')"
    )
    assert transaction_text(statements, compound=True) == (
        "BEGIN NOT ATOMIC\nSTART TRANSACTION;\nINSERT INTO t VALUES (1,'a');\nINSERT INTO t VALUES (2,'b');\nEND"
    )


async def test_a_batch_commits_only_after_its_lines_are_durable(db: MysqlDatabase) -> None:
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    rows = [(1, "it's; END;"), (2, None), (3, "back\\slash")]
    writing = asyncio.create_task(
        db.write_batch([(INSERT, rows[:2]), (INSERT, Literals(["(3,'back\\\\slash')"]))], durable)
    )
    await asyncio.sleep(0.2)
    assert not writing.done()
    assert await notes(db) == []  # nothing visible before the COMMIT
    durable.set_result(None)
    await writing
    assert await notes(db) == rows


async def test_a_failing_statement_leaves_nothing_behind(db: MysqlDatabase) -> None:
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    durable.set_result(None)
    with pytest.raises(DatabaseError):  # the second statement repeats a primary key
        await db.write_batch([(INSERT, [(1, "x")]), ("INSERT INTO t (id) VALUES (%s)", [(1,)])], durable)
    with pytest.raises(DatabaseError):
        await db.write_batch([(INSERT, [(1, "x")]), ("INSERT INTO t (id) VALUES (%s)", [(1,)])])
    assert await notes(db) == []
    await db.write_batch([(INSERT, [(5, "after")])])  # the connection pool still works
    assert await notes(db) == [(5, "after")]


async def test_a_failed_log_sync_commits_nothing(db: MysqlDatabase) -> None:
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    durable.set_exception(LogUnavailable("could not write the event log: fdatasync failed"))
    with pytest.raises(LogUnavailable):
        await db.write_batch([(INSERT, [(1, "x"), (2, "y")])], durable)
    assert await notes(db) == []
