"""Logging: structlog events carried by the standard library's logging.

Every cipherpost module logs through :func:`get_logger`: structured events
(``log.info("gateway_decision", rule=..., leaf=...)``) handed to a standard
``logging`` logger of the same name. The library itself configures nothing:
an integrator's application decides where ``cipherpost.*`` records go. The
``cipherpost`` services and commands call :func:`configure`, which renders
every record (ours, pika's, any library's) through one formatter: JSON lines
(one object per line, non-ASCII written as is, exceptions with their
traceback) or console text, with fixed fields bound on every line (the
gateway's id and log id).

The classification level of a document is logged as ``label``, never as
``level``: ``level`` is the log level.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

import structlog

_STATIC: dict[str, Any] = {}


def _static_fields(
    _: Any, __: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key, value in _STATIC.items():
        event.setdefault(key, value)
    return event


_SHARED: list[structlog.typing.Processor] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _static_fields,
]


def get_logger(name: str) -> Any:
    """A structured logger writing to the standard ``logging`` logger ``name``."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def configure(
    *,
    json_lines: bool,
    level: int = logging.INFO,
    static: Mapping[str, Any] | None = None,
    stream: Any = None,
) -> None:
    """Render every log record to ``stream`` (stderr) as JSON lines or console text.

    ``static``: fields bound on every line from now on (e.g. the gateway id).
    """
    _STATIC.clear()
    _STATIC.update(static or {})
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=partial(json.dumps, ensure_ascii=False))
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,  # records of other libraries (pika) get the same fields
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if getattr(old, "_cipherpost", False):
            root.removeHandler(old)
    handler._cipherpost = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # pika logs every connection step at INFO; its warnings and errors still come through.
    logging.getLogger("pika").setLevel(max(level, logging.WARNING))
