"""Seed section 4: a chat room with names and commands (the rules are in protocol/chat.py)."""

from __future__ import annotations

from gserver.connection import Connection
from gserver.protocol.chat import ChatSession, State
from gserver.settings import IDLE_TIMEOUT_BY_MODE


def handle(conn: Connection) -> None:
    # A quarter of what may wait for a client: a reply leaves room for the chat around it.
    session = ChatSession(conn.registry.room, conn, conn.settings.max_output_bytes // 4)
    session.start()
    logged_name: str | None = None
    try:
        for line in conn.lines():
            session.receive(line)
            if session.state is State.CLOSED:
                break
            if session.name != logged_name:
                logged_name = session.name
                conn.bind(name=logged_name)
                conn.log.info("chat_name", name=logged_name)
    finally:
        # During a server shutdown everyone is told "Server shutting down" instead.
        session.end(announce=not conn.server_stopping)


# Chat users read far more than they type, so the idle limit is longer here.
handle.default_idle_timeout = IDLE_TIMEOUT_BY_MODE["chat"]  # type: ignore[attr-defined]
