"""Seed section 3: a count of clients online, then a timestamped echo of each line.

The periodic uptime broadcast that goes with it is started by ``ticker``.
"""

from __future__ import annotations

import time

from gserver.connection import Connection
from gserver.protocol.text import echo_reply


def handle(conn: Connection) -> None:
    conn.send(f"Welcome! Currently {conn.registry.count_online()} clients online\n")
    for line in conn.lines():
        conn.send(echo_reply(line, time.time_ns() // 1_000_000))
