"""structlog, configured once: a console renderer on a terminal, JSON lines everywhere else.

The bound logger filters by level at bind time (``make_filtering_bound_logger``), so a
disabled ``log.debug(...)`` on the per-message path is a no-op method call.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any, TextIO


class _AsyncioOnFirstUse(types.ModuleType):
    """What structlog gets for ``import asyncio`` when it is imported here: structlog uses
    asyncio only in its async logging methods (``ainfo()`` ...), and importing asyncio
    costs more start-up than all the rest of structlog.  Anything asked of it is asked of
    the real asyncio, imported then."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get("asyncio") is self:
            del sys.modules["asyncio"]
        import importlib

        return getattr(importlib.import_module("asyncio"), name)


if "asyncio" in sys.modules or "structlog" in sys.modules:
    import structlog
else:
    sys.modules["asyncio"] = _AsyncioOnFirstUse("asyncio")
    try:
        import structlog
    finally:  # everyone else imports the real asyncio, whenever they do
        if isinstance(sys.modules.get("asyncio"), _AsyncioOnFirstUse):
            del sys.modules["asyncio"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(
    log_format: str = "auto", log_level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process; safe to call again with new settings."""
    stream = sys.stderr if stream is None else stream
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[log_level]),
        # One write per line, so that worker processes sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A logger with ``context`` bound; bind more per client with ``.bind(...)``."""
    return structlog.get_logger("gserver").bind(**context)
