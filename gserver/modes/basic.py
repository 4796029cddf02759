"""Seed section 1: a welcome, then every chunk echoed back as ``Echo: <the same bytes>``.

A byte-stream echo, not a line echo: the seed's own client sends ``Hello server!`` with no
newline and gets ``Echo: Hello server!``.
"""

from __future__ import annotations

from gserver.connection import Connection

WELCOME = b"Welcome to TCP Server!\n"


def handle(conn: Connection) -> None:
    conn.send(WELCOME)
    debug = conn.debug
    while chunk := conn.receive():
        if debug:
            conn.log.debug("data", size=len(chunk))
        conn.send(b"Echo: " + chunk)
