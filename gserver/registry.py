"""Who is online, and delivery to them: the seam a cluster backplane plugs into.

:class:`Registry` holds every connected client of one server; :class:`ChatRoom` the named
members of the chat.  Both only queue text on connections (``send`` never blocks), so a
broadcast to thousands costs one append per client and never waits on a socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from gserver.protocol.chat import Member, name_key

if TYPE_CHECKING:
    from gserver.connection import Connection


class ChatRoom:
    """The chat's members by name, in join order; names unique by :func:`name_key`."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[Member, str]] = {}
        self._key_of: dict[Member, str] = {}

    def join(self, member: Member, name: str) -> bool:
        key = name_key(name)
        if key in self._by_key:
            return False
        self._by_key[key] = (member, name)
        self._key_of[member] = key
        return True

    def rename(self, member: Member, new_name: str) -> bool:
        old_key = self._key_of.get(member)
        new_key = name_key(new_name)
        holder = self._by_key.get(new_key)
        if old_key is None or (holder is not None and holder[0] is not member):
            return False
        # A new name takes a new place at the end of the join order, like a new arrival.
        del self._by_key[old_key]
        self._by_key[new_key] = (member, new_name)
        self._key_of[member] = new_key
        return True

    def leave(self, member: Member) -> None:
        key = self._key_of.pop(member, None)
        if key is not None:
            del self._by_key[key]

    def names(self) -> list[str]:
        return [name for _, name in self._by_key.values()]

    def __len__(self) -> int:
        return len(self._by_key)

    def publish(self, text: str, exclude: Member | None = None) -> None:
        data = text.encode("utf-8", "surrogateescape")
        for member, _ in list(self._by_key.values()):
            if member is not exclude:
                member.send(data)

    def send_to(self, name: str, text: str) -> str | None:
        entry = self._by_key.get(name_key(name))
        if entry is None:
            return None
        member, actual_name = entry
        member.send(text)
        return actual_name


class Registry:
    """Every client connected to one server."""

    def __init__(self) -> None:
        self._connections: dict[Connection, None] = {}
        self.room = ChatRoom()

    def add(self, conn: Connection) -> None:
        self._connections[conn] = None

    def remove(self, conn: Connection) -> None:
        self._connections.pop(conn, None)

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections))

    def __contains__(self, conn: object) -> bool:
        return conn in self._connections

    def send_all(self, data: str | bytes, exclude: Connection | None = None) -> None:
        """Queue ``data`` for every client but ``exclude``, encoded once for all."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        for conn in list(self._connections):
            if conn is not exclude:
                conn.send(data)

    def broadcast(self, text: str) -> None:
        """Send ``[Broadcast] <text>`` as one line to everyone (seed section 3)."""
        self.send_all(f"[Broadcast] {text}\n")
