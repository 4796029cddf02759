"""gserver: a line-based TCP server on gevent, one greenlet per client, written in plain
blocking style.

Write your own handler::

    from gserver import Connection, Server, Settings

    def shout(conn: Connection) -> None:
        for line in conn.lines():
            conn.registry.broadcast(line.upper())

    Server(shout, Settings(port=9000)).serve_forever()

The names below are imported on first use, so that ``python -m gserver`` can monkey-patch
the standard library before anything here opens or even imports a socket.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, name there)
_EXPORTS = {
    "ChatRoom": ("gserver.registry", "ChatRoom"),
    "Connection": ("gserver.connection", "Connection"),
    "Registry": ("gserver.registry", "Registry"),
    "Server": ("gserver.server", "Server"),
    "Settings": ("gserver.settings", "Settings"),
    "SettingsError": ("gserver.settings", "SettingsError"),
    "CloseReason": ("gserver.connection", "CloseReason"),
    "IncompleteRead": ("gserver.connection", "IncompleteRead"),
    "LimitExceeded": ("gserver.connection", "LimitExceeded"),
    "StartError": ("gserver.listener", "StartError"),
    "Stats": ("gserver.counters", "Stats"),
    "configure_logging": ("gserver.logs", "configure"),
    "load_settings": ("gserver.settings", "load"),
}

__all__ = [
    "ChatRoom",
    "CloseReason",
    "Connection",
    "IncompleteRead",
    "LimitExceeded",
    "Registry",
    "Server",
    "Settings",
    "SettingsError",
    "StartError",
    "Stats",
    "__version__",
    "configure_logging",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'gserver' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from gserver.connection import CloseReason, Connection, IncompleteRead, LimitExceeded
    from gserver.counters import Stats
    from gserver.listener import StartError
    from gserver.logs import configure as configure_logging
    from gserver.registry import ChatRoom, Registry
    from gserver.server import Server
    from gserver.settings import Settings, SettingsError
    from gserver.settings import load as load_settings
