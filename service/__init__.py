"""The service: settings, the composition root, the web app, the jobs and the command line."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "tlink-push"  # the name in setup.cfg


def package_version() -> str:
    """The installed package's version (setup.cfg's), or "unknown" when run from a tree never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
