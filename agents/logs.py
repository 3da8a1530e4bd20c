"""Logging set-up for the command line: see :mod:`keys.logsetup`."""

from __future__ import annotations

from keys.logsetup import configure, get_logger

__all__ = ["configure", "get_logger"]
