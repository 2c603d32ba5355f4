"""ops/docker-entrypoint.sh run for real under /bin/sh, a fake tlink-push on PATH."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parent.parent / "ops" / "docker-entrypoint.sh"

FAKE_TLINK_PUSH = """#!/bin/sh
# Stands in for the real console script: reports how it was started.
echo "tlink-push pid=$$"
for arg in "$@"; do echo "arg=$arg"; done
"""


@dataclass
class Run:
    code: int
    out: str
    err: str
    pid: int
    seconds: float


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory plus a bin/ with the fake tlink-push."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tlink-push"
    fake.write_text(FAKE_TLINK_PUSH)
    fake.chmod(0o755)
    (tmp_path / "app").mkdir()
    return tmp_path


def run(workdir: Path, *args: str, timeout: float = 30, **env: str) -> Run:
    """Run the entrypoint in workdir/app with a clean environment."""
    path = os.pathsep.join(
        [str(workdir / "bin"), str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    )
    environ = {
        "PATH": path,
        "HOME": str(workdir),
        "SYNC_LOG_DIR": str(workdir / "app" / "logs"),
        **env,
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), *args],
        cwd=workdir / "app",
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=timeout)
    return Run(proc.returncode, out, err, proc.pid, time.monotonic() - started)


def fake_args(result: Run) -> list[str]:
    return [
        line.removeprefix("arg=")
        for line in result.out.splitlines()
        if line.startswith("arg=")
    ]


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 standing in for MySQL; yields its port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_entrypoint_is_executable() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")


def test_subcommand_execs_tlink_push_with_arguments(workdir: Path) -> None:
    result = run(workdir, "verify", "--from", "2026-01-01", "two words")

    assert result.code == 0, result.err
    assert fake_args(result) == ["verify", "--from", "2026-01-01", "two words"]
    # exec, not a child process: tlink-push runs with the entrypoint's own pid.
    assert f"tlink-push pid={result.pid}" in result.out


def test_no_arguments_means_serve(workdir: Path) -> None:
    result = run(workdir)

    assert result.code == 0, result.err
    assert fake_args(result) == ["serve"]


@pytest.mark.parametrize(
    "subcommand", ["serve", "replay", "rebuild", "verify", "prune", "sync"]
)
def test_every_subcommand_goes_to_tlink_push(workdir: Path, subcommand: str) -> None:
    result = run(workdir, subcommand)

    assert fake_args(result) == [subcommand]


def test_creates_missing_directories(workdir: Path) -> None:
    logs = workdir / "elsewhere" / "logs"

    result = run(workdir, "serve", SYNC_LOG_DIR=str(logs))

    assert result.code == 0, result.err
    app = workdir / "app"
    assert logs.is_dir()
    assert (app / "data").is_dir()
    assert (app / "instance" / "certs").is_dir()


def test_creates_the_sqlite_database_directory(workdir: Path) -> None:
    absolute = workdir / "db" / "nested"

    relative = run(workdir, "serve", DATABASE_URL="sqlite:///state/tlink.db")
    absolute_run = run(workdir, "serve", DATABASE_URL=f"sqlite:///{absolute}/tlink.db")

    assert relative.code == absolute_run.code == 0
    assert (workdir / "app" / "state").is_dir()
    assert absolute.is_dir()


def test_unwritable_log_dir_fails_clearly(workdir: Path) -> None:
    blocker = workdir / "file"
    blocker.write_text("in the way")

    result = run(workdir, "serve", SYNC_LOG_DIR=str(blocker / "logs"))

    assert result.code != 0
    assert f"cannot create directory {blocker / 'logs'}" in result.err
    assert fake_args(result) == []


def test_waits_for_mysql_that_is_down_then_fails_clearly(workdir: Path) -> None:
    port = closed_port()

    result = run(
        workdir,
        "serve",
        DATABASE_URL=f"mysql://tlink:tlinkpass@127.0.0.1:{port}/tlink",
        # Attempts are 2 s apart and elapsed time is counted in whole seconds: 5 s leaves
        # room for two attempts even when a loaded machine is slow to start python.
        DB_WAIT_SECONDS="5",
    )

    assert result.code != 0
    assert fake_args(result) == [], "tlink-push must not start without its database"
    waiting = [line for line in result.err.splitlines() if "waiting for MySQL" in line]
    assert len(waiting) >= 2, result.err
    assert f"127.0.0.1:{port}" in waiting[0]
    assert (
        f"MySQL at 127.0.0.1:{port} did not accept connections within 5s" in result.err
    )
    assert "tlinkpass" not in result.err
    assert 4 <= result.seconds < 20  # whole-second clock: 5 s can end after 4.x s


def test_starts_at_once_when_mysql_listens(workdir: Path, listener: int) -> None:
    result = run(
        workdir,
        "serve",
        DATABASE_URL=f"mysql://tlink:tlinkpass@127.0.0.1:{listener}/tlink",
        DB_WAIT_SECONDS="30",
    )

    assert result.code == 0, result.err
    assert fake_args(result) == ["serve"]
    assert "waiting for MySQL" not in result.err
    assert f"MySQL at 127.0.0.1:{listener} accepts connections" in result.err
    assert result.seconds < 5


def test_bad_wait_setting_is_named(workdir: Path) -> None:
    result = run(
        workdir,
        "serve",
        DATABASE_URL="mysql://u:p@127.0.0.1/db",
        DB_WAIT_SECONDS="soon",
    )

    assert result.code != 0
    assert "DB_WAIT_SECONDS" in result.err


def test_other_commands_run_as_is(workdir: Path) -> None:
    result = run(workdir, "sh", "-c", 'echo "shell pid=$$ args=$*"', "sh", "x", "y")

    assert result.code == 0, result.err
    assert result.out.strip() == f"shell pid={result.pid} args=x y"
    assert "tlink-push" not in result.out


def test_other_commands_skip_the_database_wait(workdir: Path) -> None:
    result = run(
        workdir,
        "sh",
        "-c",
        "echo ran",
        DATABASE_URL=f"mysql://u:p@127.0.0.1:{closed_port()}/db",
        DB_WAIT_SECONDS="30",
    )

    assert result.code == 0, result.err
    assert result.out.strip() == "ran"
    assert result.seconds < 5


def test_options_go_to_tlink_push(workdir: Path) -> None:
    result = run(workdir, "--help")

    assert result.code == 0, result.err
    assert fake_args(result) == ["--help"]


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash not installed")
def test_script_is_plain_posix_sh() -> None:
    subprocess.run(["dash", "-n", str(ENTRYPOINT)], check=True)
