"""`tlink-push`: the one command-line entry point (the subcommands are in service.cli.commands)."""

from __future__ import annotations

import argparse
import logging
import sys

from eventlog.events import EventLogError
from projections.db import DatabaseError
from projections.errors import ProjectionError
from service import package_version
from service.cli.commands import COMMANDS
from service.config import SettingsError, load_settings
from service.logs import setup_logging

log = logging.getLogger("tlink.cli")



def build_parser() -> argparse.ArgumentParser:
    """The parser of `tlink-push` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="tlink-push",
        description="TLINK push data service. Settings come from the environment and .env (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.summary, description=command.summary))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tlink-push` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tlink-push: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.LOG_FORMAT, settings.LOG_LEVEL, settings.ACCESS_LOG)
    try:
        return COMMANDS[args.command].run(args, settings)
    except DatabaseError as exc:
        print(f"tlink-push {args.command}: database error: {exc}", file=sys.stderr)
        return 1
    except (EventLogError, ProjectionError) as exc:
        print(f"tlink-push {args.command}: {exc}", file=sys.stderr)
        return 1

