"""Wait until a MySQL/MariaDB server answers: `python -m ops.wait_mysql URL [SECONDS]`."""

from __future__ import annotations

import sys
import time

import pymysql

from projections.db import mysql_connect, parse_database_url


def wait(url: str, seconds: float) -> bool:
    """True once a connection succeeds within `seconds`."""
    parsed = parse_database_url(url)
    deadline = time.monotonic() + seconds
    while True:
        try:
            mysql_connect(parsed, None, connect_timeout=2).close()
            return True
        except pymysql.err.Error as exc:
            if time.monotonic() >= deadline:
                print(f"MySQL at {parsed.host}:{parsed.port} does not answer: {exc}", file=sys.stderr)
                return False
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(0 if wait(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 30) else 1)
