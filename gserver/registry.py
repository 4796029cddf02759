"""Who is online, and delivery to them: the seam a cluster backplane plugs into.

:class:`Registry` holds every connected client of one server; :class:`ChatRoom` the named
members of the chat.  Both only queue text on connections (``send`` never blocks), so a
broadcast to thousands costs one append per client and never waits on a socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gserver.connection import send_to_all
from gserver.protocol.chat import Member, name_key

if TYPE_CHECKING:
    from gserver.backplane import Backplane
    from gserver.connection import Connection


class ChatRoom:
    """The chat's members by name, in join order; names unique by :func:`name_key`."""

    def __init__(self) -> None:
        # key -> (member, name as typed, join stamp); dict order is join order.
        self._by_key: dict[str, tuple[Member, str, int]] = {}
        self._key_of: dict[Member, str] = {}

    def join(self, member: Member, name: str, stamp: int | None = None) -> bool:
        key = name_key(name)
        if key in self._by_key:
            return False
        self._by_key[key] = (member, name, time.time_ns() if stamp is None else stamp)
        self._key_of[member] = key
        return True

    def rename(self, member: Member, new_name: str, stamp: int | None = None) -> bool:
        old_key = self._key_of.get(member)
        new_key = name_key(new_name)
        holder = self._by_key.get(new_key)
        if old_key is None or (holder is not None and holder[0] is not member):
            return False
        # A new name takes a new place at the end of the join order, like a new arrival.
        del self._by_key[old_key]
        self._by_key[new_key] = (member, new_name, time.time_ns() if stamp is None else stamp)
        self._key_of[member] = new_key
        return True

    def leave(self, member: Member) -> None:
        key = self._key_of.pop(member, None)
        if key is not None:
            del self._by_key[key]

    def names(self) -> list[str]:
        return [name for _, name, _ in self._by_key.values()]

    def __len__(self) -> int:
        return len(self._by_key)

    def holds(self, key: str) -> bool:
        return key in self._by_key

    def holder_of(self, key: str) -> Member | None:
        entry = self._by_key.get(key)
        return None if entry is None else entry[0]

    def key_of(self, member: Member) -> str | None:
        return self._key_of.get(member)

    def local_keys(self) -> list[str]:
        return list(self._by_key)

    def local_entries(self) -> list[tuple[str, str, int]]:
        """(key, name, join stamp) of every member of this node's room."""
        return [(key, name, seq) for key, (_, name, seq) in self._by_key.items()]

    def publish(self, text: str, exclude: Member | None = None) -> None:
        data = text.encode("utf-8", "surrogateescape")
        send_to_all([m for m, _, _ in self._by_key.values() if m is not exclude], data)

    def publish_since(self, text: str, stamp: int) -> None:
        """Deliver here to members who had joined by ``stamp`` (an event from elsewhere
        that was sent before a newer member arrived is not theirs to see)."""
        data = text.encode("utf-8", "surrogateescape")
        send_to_all([m for m, _, joined in self._by_key.values() if joined <= stamp], data)

    def send_to(self, name: str, text: str) -> str | None:
        return self.deliver_to_key(name_key(name), text)

    def deliver_to_key(self, key: str, text: str) -> str | None:
        entry = self._by_key.get(key)
        if entry is None:
            return None
        member, actual_name, _ = entry
        member.send(text)
        return actual_name


class Registry:
    """Every client connected to one server, and delivery to them.

    With a cluster backplane attached, what is sent to everyone reaches the clients of
    every node; :meth:`broadcast_local` stays on this node (the uptime ticks).
    """

    def __init__(self, room: ChatRoom | None = None, backplane: Backplane | None = None) -> None:
        self._connections: dict[Connection, None] = {}
        self.room = room if room is not None else ChatRoom()
        self.backplane = backplane

    def add(self, conn: Connection) -> None:
        self._connections[conn] = None
        if self.backplane is not None:
            self.backplane.set_count(len(self._connections))

    def remove(self, conn: Connection) -> None:
        self._connections.pop(conn, None)
        if self.backplane is not None:
            self.backplane.set_count(len(self._connections))

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections))

    def __contains__(self, conn: object) -> bool:
        return conn in self._connections

    def count_online(self) -> int:
        """Clients connected here, plus those of every other live node of the cluster."""
        remote = self.backplane.remote_count() if self.backplane is not None else 0
        return len(self._connections) + remote

    def send_all(self, data: str | bytes, exclude: Connection | None = None) -> None:
        """Queue ``data`` for every client (of every node) but ``exclude``."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.send_all_local(data, exclude)
        if self.backplane is not None:
            self.backplane.publish({"t": "all", "data": data.decode("utf-8", "surrogateescape")})

    def send_all_local(self, data: str | bytes, exclude: Connection | None = None) -> None:
        """Queue ``data`` for every client of this process, encoded once for all."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        send_to_all([c for c in self._connections if c is not exclude], data)

    def broadcast(self, text: str) -> None:
        """Send ``[Broadcast] <text>`` as one line to everyone (seed section 3)."""
        self.send_all(f"[Broadcast] {text}\n")

    def broadcast_local(self, text: str) -> None:
        """``broadcast`` to this process's clients only."""
        self.send_all_local(f"[Broadcast] {text}\n")

    def deliver_remote(self, event: dict[str, Any]) -> None:
        """An event from another node of the cluster, for this node's clients."""
        kind, text = event.get("t"), event.get("text", "")
        # The base class's methods deliver on this node only, whatever room this is.
        if kind == "room":
            self.room.publish_since(text, int(event.get("ts", 0)))
        elif kind == "to":
            ChatRoom.deliver_to_key(self.room, str(event.get("key")), text)
        elif kind == "all":
            self.send_all_local(str(event.get("data", "")))
