"""A private MariaDB server that a test or a crash run can start, kill and start again (outages)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pymysql

from ops.bench_common import free_port
from projections.db import mysql_connect, parse_database_url

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def available() -> bool:
    """Whether the MariaDB server binaries are installed here."""
    return Path(MARIADBD).exists() and Path(INSTALL_DB).exists()


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    """All rows of one statement, on a connection of its own to the MySQL/MariaDB database of the URL."""
    parsed = parse_database_url(url)
    conn = mysql_connect(parsed, parsed.database)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return list(cur.fetchall())
    finally:
        conn.close()


@dataclass(frozen=True)
class ServerTls:
    """The PEM files a server with TLS is started with: the CA its clients may check, its certificate and key."""

    ca: Path
    cert: Path
    key: Path


class PrivateMariaDB:
    """mariadbd on its own port and data folder; with `tls`, it offers TLS (and with
    `require_secure_transport`, refuses connections without it); `options` go to mariadbd as they are."""

    def __init__(
        self, folder: Path, tls: ServerTls | None = None, require_secure_transport: bool = False,
        options: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.folder = folder
        self.tls = tls
        self.require_secure_transport = require_secure_transport
        self.options = list(options)  # further mariadbd options, e.g. --sql-mode=...
        self.data = folder / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={self.data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", "--user=root"],
            check=True, capture_output=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/tlink"

    def start(self) -> None:
        """Start the server and wait until it answers; the database `tlink` exists afterwards."""
        options = list(self.options)
        if self.tls is not None:
            options += [f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.cert}", f"--ssl-key={self.tls.key}"]
        if self.require_secure_transport:
            options.append("--require-secure-transport=ON")
        with open(self.folder / "mysqld.err", "ab") as errors:
            self.process = subprocess.Popen(
                [MARIADBD, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                 "--bind-address=127.0.0.1", f"--socket={self.folder / 'mysqld.sock'}",
                 f"--pid-file={self.folder / 'mysqld.pid'}", "--user=root", "--skip-log-bin",
                 "--innodb-buffer-pool-size=32M", *options],
                stdout=subprocess.DEVNULL, stderr=errors,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:  # PyMySQL's default: TLS when the server offers it, as one requiring it needs
                conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1)
                conn.cursor().execute("CREATE DATABASE IF NOT EXISTS tlink")
                conn.close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError((self.folder / "mysqld.err").read_text()[-2000:]) from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a pulled cable would stop it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def query(self, sql: str) -> list[tuple[object, ...]]:
        return query(self.url, sql)
