"""Shared fixtures: a fresh database on each backend, settings, and the real app."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from eventlog.files import device_days, device_ids, log_path
from ops import nats_cluster
from ops.private_mariadb import PrivateMariaDB
from projections.db import connect, mysql_connect, mysql_url, parse_database_url
from service.config import Settings, load_settings
from service.http.app import create_app

FIXTURES = Path(__file__).parent / "fixtures"
MYSQL_URL = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
# ops/test unpacks Debian's prometheus package into the venv for promtool (the server is not installed).
VENV_PROMTOOL = Path(sys.prefix) / "tools" / "usr" / "bin" / "promtool"


class Clock:
    """A settable UTC clock."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def fixture_bytes(name: str) -> bytes:
    """A fixture file's exact bytes."""
    return (FIXTURES / name).read_bytes()


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool: the venv's (see ops/test) or one on PATH; missing, a failure in CI and a skip elsewhere."""
    found = str(VENV_PROMTOOL) if VENV_PROMTOOL.is_file() else shutil.which("promtool")
    return required_tool(found, "promtool is missing: ./ops/test unpacks it from Debian's prometheus package into"
                                " .venv/tools/ (apt-get download prometheus, then dpkg-deb -x)")  # fmt: skip


def required_tool(found: str | None, message: str) -> str:
    """`found`, the path of a program the test needs; missing, a failure in CI (ops/test installs it) and a skip
    with `message` elsewhere."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def nats_server() -> str:
    """The nats-server binary the cluster tests start private servers from (see ops/test)."""
    return required_tool(nats_cluster.NATS_SERVER if nats_cluster.available() else None,
                         "nats-server is missing: ./ops/test installs Debian's nats-server package")  # fmt: skip


def _mysql_admin() -> Any:
    return mysql_connect(parse_database_url(MYSQL_URL), None, autocommit=True)


def mysql_database_url() -> Iterator[str]:
    """A new, empty MySQL database for one test, dropped afterwards."""
    url = parse_database_url(MYSQL_URL)
    name = f"tlink_test_{uuid.uuid4().hex[:12]}"
    admin = _mysql_admin()
    try:
        admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        yield mysql_url(url, name)
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL on each backend: embedded SQLite and a real MariaDB/MySQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tlink.db"
    else:
        yield from mysql_database_url()


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A private MariaDB server of the test's own, started; killed afterwards."""
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh embedded SQLite database URL."""
    return f"sqlite:///{tmp_path}/tlink.db"


@pytest.fixture
def log_root(tmp_path: Path) -> Path:
    """An empty log root."""
    return tmp_path / "logs"


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(database_url: str, log_root: Path) -> MakeSettings:
    """Settings for a test app on the parametrized backend; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "DATABASE_URL": database_url,
            "SYNC_LOG_DIR": log_root,
            "USE_HTTPS": False,
            "TLINK_SYNC_ENABLED": False,
            "API_KEYS": [],
            "PUSH_WEBHOOK_SECRET": "",
            "WEBHOOK_TOKEN": "",
        }
        values.update(overrides)
        return load_settings(**values)

    return make


AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def app_client(aiohttp_client: Any, make_settings: MakeSettings) -> AsyncIterator[AppClient]:
    """Start the real app (with settings overrides) and return an HTTP client for it."""

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**overrides)))  # type: ignore[no-any-return]

    yield start


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Leave the root, access and scheduler loggers as the test found them (CLI tests set logging up)."""
    root = logging.getLogger()
    access = logging.getLogger("aiohttp.access")
    scheduler = logging.getLogger("apscheduler")
    saved = (list(root.handlers), root.level, access.level, scheduler.level)
    yield
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    access.setLevel(saved[2])
    scheduler.setLevel(saved[3])


async def run_cli(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run `tlink-push ARGS` in a process of its own (the test's event loop keeps serving meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from service.cli.main import main; sys.exit(main(sys.argv[1:]))", *args,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


def fake_tlink_settings(url: str, user: int = 385) -> dict[str, Any]:
    """Settings that point the TLINK client at a fake TLINK server (ops/fake_tlink.py) at `url`."""
    return {
        "TLINK_BASE_URL": url,
        "TLINK_APP_ID": "app-1",
        "TLINK_OAUTH_CLIENT_ID": "example-client",
        "TLINK_OAUTH_CLIENT_SECRET": "example-secret",
        "TLINK_OAUTH_USERNAME": "demo",
        "TLINK_OAUTH_PASSWORD": "demo",
        "TLINK_SYNC_USER_IDS": str(user),
    }


def logged_sequence_numbers(root: Path) -> list[int]:
    """The body field `seq` of every line in the log under `root` (tests that number their pushes)."""
    found = []
    for device_id in device_ids(root):
        for day in device_days(root, device_id):
            for line in log_path(root, device_id, day).read_bytes().splitlines():
                found.append(orjson.loads(line)["body"]["seq"])
    return found


async def dump(url: str, tables: tuple[str, ...]) -> dict[str, list[str]]:
    """Every row of `tables` in the database of `url`, sorted, for comparing two databases."""
    db = await connect(url)
    try:
        return {t: sorted(map(repr, await db.fetchall(f"SELECT * FROM {t}"))) for t in tables}  # type: ignore[misc]
    finally:
        await db.close()
