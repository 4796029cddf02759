"""Seed section 4: a chat with names, rooms and commands (the rules are in protocol/chat.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

from gserver.connection import Connection
from gserver.protocol.chat import ChatSession, State
from gserver.protocol.passwords import verify
from gserver.settings import IDLE_TIMEOUT_BY_MODE


def password_check(hashed: str | None) -> Callable[[str], bool] | None:
    """The operators' password check, on gevent's threadpool: scrypt is slow on purpose,
    and must not stop every other client while it runs."""
    if hashed is None:
        return None

    def check(password: str) -> bool:
        return bool(gevent.get_hub().threadpool.apply(verify, (password, hashed)))

    return check


def handle(conn: Connection) -> None:
    def report(event: str, fields: dict[str, Any]) -> None:
        conn.log.info(event, client=conn.peer, **fields)

    session = ChatSession(
        conn.registry.room,
        conn,
        # A quarter of what may wait for a client: a reply leaves room for the chat around it.
        max_reply_bytes=conn.settings.max_output_bytes // 4,
        address=conn.ip,
        check_password=password_check(conn.settings.oper_password),
        report=report,
    )
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
