"""The SQL the MySQL branches send, as text: what a MySQL 8 server gets, which no test here can start.

MariaDB runs all of it in the other tests; these hold the parts whose MySQL form differs from
SQLite's, and the one that differs between MySQL and MariaDB (the transaction's form), to
their exact text. tests/test_mysql_batches.py runs the multi-statement form on MariaDB.
"""

from __future__ import annotations

import os
import re

import pytest

from ops.private_mariadb import PrivateMariaDB, available
from projections.db import is_mariadb, mysql_multirow, transaction_text
from projections.rebuild import NEW, READ_MODEL_TABLES
from projections.schema import renamed_statements, schema_script
from projections.sql_recorder import Statements
from service.config import load_settings
from service.http.app import create_app
from tests.conftest import fixture_bytes, run_cli

STATEMENTS = Statements("mysql")
UPSERTS = {name: sql for name, sql in vars(STATEMENTS).items() if isinstance(sql, str) and "CASE" in sql}


def assignments(sql: str) -> list[tuple[str, str]]:
    """The `column = expression` pairs of an ON DUPLICATE KEY UPDATE, in order (split at top-level commas)."""
    _, _, body = sql.partition(" ON DUPLICATE KEY UPDATE ")
    parts, depth, start = [], 0, 0
    for i, char in enumerate(body + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:i].strip())
            start = i + 1
    pairs = [tuple(part.split(" = ", 1)) for part in parts]
    assert all(len(pair) == 2 and re.fullmatch(r"\w+", pair[0]) for pair in pairs), pairs
    return pairs  # type: ignore[return-value]


def test_upserts_are_on_duplicate_key_update_with_values():
    assert set(UPSERTS) == {"users", "device_push", "device_meta", "sensor_latest", "sensor_meta", "blocks", "files"}
    for name, sql in UPSERTS.items():
        head, _, body = sql.partition(" ON DUPLICATE KEY UPDATE ")
        assert re.fullmatch(r"INSERT INTO \w+ \([\w, ]+\) VALUES \((%s, )*%s\)", head), name
        assert not re.search(r"\b(excluded|old|new)\.", body), name  # SQLite's names, not MySQL's
        inserted = set(re.findall(r"\w+", head.split("(")[1]))
        assert set(re.findall(r"VALUES\((\w+)\)", body)) <= inserted, name


@pytest.mark.parametrize("name", sorted(UPSERTS))
def test_no_assignment_reads_a_column_an_earlier_one_changed(name):
    # MySQL (and MariaDB) apply ON DUPLICATE KEY UPDATE assignments left to right, each later one
    # seeing the earlier ones' results: a column that a condition tests must be assigned last.
    pairs = assignments(UPSERTS[name])
    assert pairs, name
    for i, (column, _) in enumerate(pairs):
        for later, expression in pairs[i + 1 :]:
            stored = re.sub(r"VALUES\(\w+\)", "", expression)  # VALUES(c) is the incoming row's: unchanged
            assert not re.search(rf"\b{column}\b", stored), f"{name}: {later} reads {column} after it was assigned"


def test_inserts_that_skip_existing_rows_do_so_without_warnings():
    assert STATEMENTS.events.endswith(") ON DUPLICATE KEY UPDATE event_id = event_id")
    assert STATEMENTS.readings.endswith(") ON DUPLICATE KEY UPDATE sensor_id = sensor_id")
    assert "IGNORE" not in STATEMENTS.events + STATEMENTS.readings


def test_batch_inserts_are_multi_row_with_the_update_clause_once():
    rows = [(1, "2026-05-01", 0, 0, 10, 1, None, None), (1, "2026-05-01", 1, 10, 20, 65, None, None)]
    [statement] = mysql_multirow(STATEMENTS.blocks, rows)
    head, _, tail = STATEMENTS.blocks.partition(" VALUES ")
    assert statement == (
        head + " VALUES (1,'2026-05-01',0,0,10,1,NULL,NULL),(1,'2026-05-01',1,10,20,65,NULL,NULL)"
        + tail[tail.index(")") + 1 :]
    )
    assert statement.count("ON DUPLICATE KEY UPDATE") == 1


def test_mysql_gets_a_multi_statement_and_mariadb_a_compound_statement():
    for version in ("8.0.36", "8.4.3", "9.1.0", "8.0.36-0ubuntu0.22.04.1"):
        assert not is_mariadb(version), version
    for version in ("10.11.19-MariaDB-0+deb12u1", "5.5.5-10.6.4-MariaDB-log", "11.4.2-MariaDB"):
        assert is_mariadb(version), version
    assert transaction_text(["INSERT INTO t VALUES (1)"], compound=False) == "BEGIN;\nINSERT INTO t VALUES (1)"


def test_rebuild_creates_the_read_model_tables_under_new_names_with_the_mysql_ddl():
    statements = renamed_statements("mysql", READ_MODEL_TABLES, NEW)
    created = [re.match(r"CREATE TABLE (\w+) \(", s).group(1) for s in statements]  # type: ignore[union-attr]
    assert created == [f"{t}{NEW}" for t in ("users", "devices", "sensors", "sensor_readings")]
    assert all("ENGINE=InnoDB" in s for s in statements)
    script = schema_script("mysql")
    assert "BEGIN NOT ATOMIC" not in script and "RETURNING" not in script  # nothing MariaDB-only in the DDL


# MySQL 8's default sql_mode; MariaDB's ONLY_FULL_GROUP_BY is the stricter of the two (it does not
# look for functional dependencies), so a query it accepts MySQL accepts too.
MYSQL8_SQL_MODE = (
    "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)


@pytest.mark.mysql
@pytest.mark.slow
@pytest.mark.skipif(not available(), reason="no mariadbd")
async def test_every_read_and_write_path_runs_under_mysql_8s_sql_mode(aiohttp_client, tmp_path):
    server = PrivateMariaDB(tmp_path / "mariadb", options=[f"--sql-mode={MYSQL8_SQL_MODE}"])
    server.start()
    try:
        assert server.query("SELECT @@GLOBAL.sql_mode") == [(MYSQL8_SQL_MODE,)]
        settings = load_settings(DATABASE_URL=server.url, SYNC_LOG_DIR=tmp_path / "logs", USE_HTTPS=False, API_KEYS=[])
        client = await aiohttp_client(create_app(settings))
        for _ in range(2):  # stored, then a duplicate
            resp = await client.post("/api/webhooks/tlink", data=fixture_bytes("sample_push.json"))
            assert resp.status == 200 and (await resp.json())["projected"] is True
        device = "/api/users/385/devices/2864"
        for url in ("/api/users/385/devices", f"{device}/latest", f"{device}/history", f"{device}/events",
                    f"{device}/coverage?day=2019-05-10", "/api/ready"):  # fmt: skip
            resp = await client.get(url)
            assert resp.status == 200, (url, await resp.text())
        await client.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "TLINK_", "SYNC_LOG_DIR"))}
        env.update(DATABASE_URL=server.url, SYNC_LOG_DIR=str(tmp_path / "logs"), LOG_LEVEL="WARNING")
        for command in (["rebuild"], ["replay"], ["verify"], ["prune"]):
            status, _, err = await run_cli(env, tmp_path, *command)
            assert status == 0, (command, err)
        assert server.query("SELECT COUNT(*) FROM sensor_readings") == [(3,)]
    finally:
        server.kill()
