"""structlog, configured once: a console renderer on a terminal, JSON lines everywhere else.

The bound logger filters by level at bind time (``make_filtering_bound_logger``), so a
disabled ``log.debug(...)`` on the per-message path is a no-op method call.
"""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import MutableMapping
from json.encoder import encode_basestring_ascii
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


class JSONLines:
    """One processor for JSON lines, with the output of ``add_log_level``, ``TimeStamper(
    fmt="iso", utc=True)``, ``format_exc_info`` and ``JSONRenderer()`` in a row, byte for
    byte, at a fraction of their cost: every client's connect and disconnect is logged at
    the default level.  Values other than text, whole numbers, finite floats, booleans and
    None (and keys other than text) go through structlog's own JSONRenderer."""

    def __init__(self) -> None:
        self._fallback = structlog.processors.JSONRenderer()
        self._second = -1
        self._second_text = ""

    def _timestamp(self) -> str:
        """``datetime.now(timezone.utc).isoformat()`` with ``Z`` for ``+00:00``."""
        micros = time.time_ns() // 1000
        second, micro = divmod(micros, 1_000_000)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{micro:06d}Z" if micro else f"{self._second_text}Z"

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        if method_name == "warn":  # add_log_level's names
            event_dict["level"] = "warning"
        elif method_name == "exception":
            event_dict["level"] = "error"
        else:
            event_dict["level"] = method_name
        event_dict["timestamp"] = self._timestamp()
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        parts = []
        for key, value in event_dict.items():
            kind = value.__class__
            if kind is str:
                text = encode_basestring_ascii(value)
            elif kind is int:
                text = int.__repr__(value)
            elif value is None:
                text = "null"
            elif value is True:
                text = "true"
            elif value is False:
                text = "false"
            elif kind is float and value - value == 0.0:  # finite
                text = float.__repr__(value)
            else:
                return str(self._fallback(logger, method_name, event_dict))
            if key.__class__ is not str:
                return str(self._fallback(logger, method_name, event_dict))
            parts.append(f"{encode_basestring_ascii(key)}: {text}")
        return "{" + ", ".join(parts) + "}"


def configure(
    log_format: str = "auto", log_level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process; safe to call again with new settings."""
    stream = sys.stderr if stream is None else stream
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    processors: list[Any]
    if log_format == "console":
        processors = [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=stream.isatty()),
        ]
    else:
        processors = [JSONLines()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[log_level]),
        # One write per line, so that worker processes sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A logger with ``context`` bound; bind more per client with ``.bind(...)``."""
    return structlog.get_logger("gserver").bind(**context)
