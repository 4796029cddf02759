"""Seed section 5: each chunk received is answered with its length, hex, UTF-8 and Base64."""

from __future__ import annotations

from gserver.connection import Connection
from gserver.protocol.text import ChunkInspector


def handle(conn: Connection) -> None:
    inspector = ChunkInspector()
    for chunk in conn.chunks():
        conn.log.debug("data", size=len(chunk))
        conn.send(inspector.report(chunk))
