"""The periodic uptime broadcast, and process uptime as Node's ``process.uptime()``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent

from gserver.protocol.text import uptime_message

if TYPE_CHECKING:
    from gserver.server import Server

# gserver is imported as the process starts (python -m gserver), so this is close enough
# to the process's own start time, and it needs no /proc.
_STARTED = time.monotonic()


def process_uptime() -> float:
    """Seconds since gserver was loaded into this process."""
    return time.monotonic() - _STARTED


def start_uptime_broadcast(server: Server) -> None:
    """Broadcast ``Server uptime: <s>s`` every ``uptime_interval`` seconds (0 = off)."""
    interval = server.settings.uptime_interval
    if interval > 0:
        server.spawn_background(_broadcast_forever, server, interval)


def _broadcast_forever(server: Server, interval: float) -> None:
    while True:
        gevent.sleep(interval)
        # Each process reports its own uptime to its own clients, even in a cluster.
        server.registry.broadcast(uptime_message(process_uptime()), local=True)
