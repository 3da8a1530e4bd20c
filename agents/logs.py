"""structlog set-up: JSON lines on stderr for services, quiet for interactive commands."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(*, json_lines: bool, level: int = logging.INFO) -> None:
    """Services log JSON (one object per line); commands show warnings only, as plain text."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pika logs connection details at INFO; keep only its warnings.
    logging.getLogger("pika").setLevel(logging.WARNING)
