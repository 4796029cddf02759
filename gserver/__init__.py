"""gserver: a line-based TCP server on gevent, one greenlet per client, written in plain
blocking style.

Write your own handler::

    from gserver import Connection, Server, Settings

    def shout(conn: Connection) -> None:
        for line in conn.lines():
            conn.registry.broadcast(line.upper())

    Server(shout, Settings(port=9000)).serve_forever()
"""

__version__ = "0.1.0"

from gserver.connection import Connection
from gserver.logs import configure as configure_logging
from gserver.registry import ChatRoom, Registry
from gserver.server import Server, StartError, Stats
from gserver.settings import Settings, SettingsError
from gserver.settings import load as load_settings

__all__ = [
    "ChatRoom",
    "Connection",
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
