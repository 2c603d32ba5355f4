"""Errors of the projections package."""

from __future__ import annotations


class ProjectionError(Exception):
    """Root error of the projections package: the projection cannot go on."""
