"""Who is online, and delivery to them; the port a cluster backplane plugs into.

:class:`Registry` holds every connected client of one server; :class:`ChatRoom` the named
members of the chat.  Both only queue text on their members (``send`` never blocks), so a
fan-out to thousands costs one append per client and never waits on a socket.

A cluster is whatever implements :class:`ClusterLink` (``backplane.py`` does, on Redis):
the registry and the room tell it what happened here and ask it what happened elsewhere;
they never import it, and without one they serve one process alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gserver.protocol.chat import Entered, Member, Removal, name_key
from gserver.protocol.cluster import ClientCount, Direct, Event, RoomLine, ToAll
from gserver.protocol.rooms import room_key
from gserver.rooms import Rooms

Fanout = Callable[[Iterable[Member], bytes], None]


def send_each(members: Iterable[Member], data: bytes) -> None:
    """The plain fan-out: ``member.send(data)`` for each (the server passes a faster one)."""
    for member in members:
        member.send(data)


@dataclass(frozen=True)
class LinkState:
    """How a cluster link is doing, for /healthz and the metrics."""

    up: bool
    events_in: int
    events_out: int
    events_dropped: int
    failed_parts: tuple[str, ...] = ()


class ClusterLink(Protocol):
    """The room port: what a cluster backplane provides to one node.

    Every call returns at once or after one bounded round trip; none blocks a handler on
    a dead cluster (a link that is down answers from what this node knows).
    """

    def start(self, registry: Registry) -> None:
        """Join the cluster; events for this node go to ``registry.deliver``."""

    def stop(self) -> None:
        """Leave the cluster: this node's names and count go at once."""

    def state(self) -> LinkState: ...

    def publish(self, event: Event) -> None:
        """Tell the other nodes (never blocks; at most once)."""

    def count_changed(self, count: int) -> None:
        """This node's client count changed (never blocks; coalesced)."""

    def remote_count(self) -> int:
        """Clients of the other live nodes, as last known (never blocks)."""
        ...

    def claim(self, key: str, name: str, stamp: int) -> bool:
        """Hold ``name`` cluster-wide unless another live node holds it and this one does
        not (a node that holds it already, as after a split, may spell it anew)."""
        ...

    def release(self, key: str) -> None:
        """This node no longer holds the name with ``key``."""

    def names(self) -> list[str] | None:
        """Every name held by a live node, in join order; None when the link is down."""
        ...

    def holder(self, key: str) -> str | None:
        """The name as spelled by a live holder of ``key``, if any."""
        ...


class _Entry:
    """A member of this node's room: its name as typed, its place in the join order,
    and since when it hears what other nodes say (kept across renames)."""

    __slots__ = ("hears_since", "member", "name", "order")

    def __init__(self, member: Member, name: str, order: int, hears_since: int) -> None:
        self.member = member
        self.name = name
        self.order = order
        self.hears_since = hears_since


class ChatRoom:
    """The chat (the ``Chat`` of protocol/chat.py): its members by name, in join order,
    names unique by :func:`name_key` (across the cluster when a link is attached), and
    their rooms (``rooms.Rooms``)."""

    def __init__(
        self,
        fanout: Fanout = send_each,
        link: ClusterLink | None = None,
        default_room: str = "lobby",
        max_rooms: int = 1000,
        history_lines: int = 0,
    ) -> None:
        self._fanout = fanout
        self.link = link
        self.rooms = Rooms(default_room, max_rooms, history_lines)
        self._address: dict[Member, str] = {}  # for bans
        self._by_key: dict[str, _Entry] = {}  # dict order is join order
        self._key_of: dict[Member, str] = {}
        # Names being claimed or released in the cluster right now.  A client of this node
        # who asks for one meanwhile is told it is taken: two operations of one node on one
        # name, on two Redis connections, could reach Redis in either order, and a release
        # that lands after another member's claim deletes it (or a second claim overwrites
        # the first one's spelling).  One at a time, the cluster sees them in order.
        self._pending: set[str] = set()

    def _taken_here(self, key: str, member: Member | None = None) -> bool:
        entry = self._by_key.get(key)
        return key in self._pending or (entry is not None and entry.member is not member)

    def join(self, member: Member, name: str, address: str = "") -> bool:
        key = name_key(name)
        if self._taken_here(key):
            return False
        stamp = time.time_ns()
        # Claim in the cluster first, join here after: until the claim is settled this
        # client is not in the room and receives nothing meant for its members.
        if not self._claim(key, name, stamp):
            return False
        self._by_key[key] = _Entry(member, name, stamp, stamp)
        self._key_of[member] = key
        self._address[member] = address
        self.rooms.place(member)
        return True

    def rename(self, member: Member, new_name: str) -> bool:
        old_key = self._key_of.get(member)
        new_key = name_key(new_name)
        if old_key is None or self._taken_here(new_key, member):
            return False
        stamp = time.time_ns()
        if new_key != old_key and not self._claim(new_key, new_name, stamp):
            return False
        entry = self._by_key.pop(old_key)
        # A new name takes a new place at the end of the join order, like a new arrival;
        # what the member hears is unchanged, so a rename loses no line.
        entry.name, entry.order = new_name, stamp
        self._by_key[new_key] = entry
        self._key_of[member] = new_key
        if new_key == old_key:
            self._claim(new_key, new_name, stamp)  # the new spelling, held already
        else:
            # After the claim, on the same greenlet: the cluster sees the user's renames in
            # the order they made them.
            self._release(old_key)
        return True

    def _claim(self, key: str, name: str, stamp: int) -> bool:
        if self.link is None:
            return True
        self._pending.add(key)
        try:
            return self.link.claim(key, name, stamp)
        finally:
            self._pending.discard(key)

    def _release(self, key: str) -> None:
        if self.link is None:
            return
        self._pending.add(key)
        try:
            self.link.release(key)
        finally:
            self._pending.discard(key)

    def leave(self, member: Member) -> bool:
        """``member`` goes; False when they had gone already (kicked, or never named)."""
        key = self._key_of.pop(member, None)
        self.rooms.leave(member)
        self._address.pop(member, None)
        if key is None:
            return False
        del self._by_key[key]
        self._release(key)
        return True

    def names(self, room: str | None = None) -> list[str]:
        """The names in ``room`` in arrival order, operators marked ``@``; without a room,
        everyone's names in join order (the whole cluster's when it is reachable).

        Rooms are each node's own (the cluster carries no rooms yet), so with a cluster the
        default room stands for the cluster's room: it lists every name a live node holds,
        in join order, but this node's members who went to another room.
        """
        default = self.rooms.default_key
        if room is not None and (self.link is None or room_key(room) != default):
            return self._names_in(room)
        cluster = self.link.names() if self.link is not None else None
        if cluster is None:
            return self._names_in(room) if room is not None else self._local_names()
        # Local names the cluster does not show yet (joined while it was away) go last.
        shown = {name_key(n) for n in cluster}
        everyone = cluster + [n for n in self._local_names() if name_key(n) not in shown]
        if room is None:
            return everyone
        elsewhere = {
            key
            for key, entry in self._by_key.items()
            if room_key(self.rooms.room_of(entry.member)) != default
        }
        operators = {self._key_of[m] for m in self.rooms.operators if m in self._key_of}
        return [
            ("@" if name_key(n) in operators else "") + n
            for n in everyone
            if name_key(n) not in elsewhere
        ]

    def _names_in(self, room: str) -> list[str]:
        operators = self.rooms.operators
        return [
            ("@" if member in operators else "") + self._by_key[self._key_of[member]].name
            for member in self.rooms.members(room)
            if member in self._key_of
        ]

    def _local_names(self) -> list[str]:
        return [entry.name for entry in self._by_key.values()]

    def __len__(self) -> int:
        return len(self._by_key)

    def local_entries(self) -> list[tuple[str, str, int]]:
        """(key, name, join-order stamp) of every member of this node's room."""
        return [(key, entry.name, entry.order) for key, entry in self._by_key.items()]

    def publish(
        self, room: str, text: str, exclude: Member | None = None, keep: bool = False
    ) -> None:
        """``text`` to everyone in ``room`` but ``exclude``, on every node; ``keep``: a line
        for the room's history."""
        data = text.encode("utf-8", "surrogateescape")
        self._fanout([m for m in self.rooms.members(room) if m is not exclude], data)
        if keep:
            self.rooms.record(room, text)
        if self.link is not None:
            self.link.publish(RoomLine(text, time.time_ns()))

    # -- rooms ----------------------------------------------------------------------------

    def room_of(self, member: Member) -> str:
        return self.rooms.room_of(member)

    def enter(self, member: Member, room: str) -> tuple[Entered, str]:
        return self.rooms.enter(member, room)

    def listing(self) -> list[tuple[str, int]]:
        return self.rooms.listing()

    def topic(self, room: str) -> str | None:
        return self.rooms.topic(room)

    def set_topic(self, room: str, text: str) -> None:
        self.rooms.set_topic(room, text)

    def history(self, room: str) -> list[tuple[int, str]]:
        return self.rooms.history(room)

    # -- operators ------------------------------------------------------------------------

    def make_operator(self, member: Member) -> None:
        self.rooms.operators.add(member)

    def remove(self, name: str, removal: Removal) -> str | None:
        """Kick (and ban, with ``ban_minutes``) the holder of ``name``: they are told why
        and closed, their room is told instead of a leave notice; their name, or None."""
        entry = self._by_key.get(name_key(name))
        if entry is None:
            return None
        member, held = entry.member, entry.name
        room = self.rooms.room_of(member)
        address = self._address.get(member, "")
        member.send(removal.to_them())
        self.leave(member)  # removed now: their session's own end announces nothing
        member.close("kicked" if removal.ban_minutes is None else "banned")
        if removal.ban_minutes is not None and address:
            self.rooms.ban(address, removal.ban_minutes)
        self.publish(room, removal.to_room(held), exclude=member)
        return held

    def is_banned(self, address: str) -> bool:
        return self.rooms.is_banned(address)

    def bans(self) -> list[tuple[str, float]]:
        return self.rooms.bans()

    def unban(self, address: str) -> bool:
        return self.rooms.unban(address)

    def send_to(self, name: str, text: str) -> str | None:
        """``text`` to the holder of ``name`` (on any node); their name, or None."""
        key = name_key(name)
        delivered = self.deliver_direct(key, text)
        if self.link is None:
            return delivered
        # Told to every node even when delivered here: after a split, two users on two
        # nodes may hold the name, and both get it.
        self.link.publish(Direct(key, text))
        return delivered if delivered is not None else self.link.holder(key)

    # -- what other nodes say, for this node's members --------------------------------------

    def deliver_line(self, text: str, stamp: int) -> None:
        """A line said elsewhere at ``stamp``: members who arrived later do not see it."""
        data = text.encode("utf-8", "surrogateescape")
        self._fanout([e.member for e in self._by_key.values() if e.hears_since <= stamp], data)

    def deliver_direct(self, key: str, text: str) -> str | None:
        entry = self._by_key.get(key)
        if entry is None:
            return None
        entry.member.send(text)
        return entry.name


class Registry:
    """Every client connected to one server, and delivery to them (on every node of the
    cluster, when a link is attached)."""

    def __init__(
        self,
        fanout: Fanout = send_each,
        link: ClusterLink | None = None,
        room: ChatRoom | None = None,
    ) -> None:
        self._members: dict[Member, None] = {}
        self._fanout = fanout
        self.link = link
        self.room = room if room is not None else ChatRoom(fanout, link)

    def add(self, member: Member) -> None:
        self._members[member] = None
        if self.link is not None:
            self.link.count_changed(len(self._members))

    def remove(self, member: Member) -> None:
        self._members.pop(member, None)
        if self.link is not None:
            self.link.count_changed(len(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members))

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def count_online(self) -> int:
        """Clients connected here, plus those of every other live node as last known."""
        remote = self.link.remote_count() if self.link is not None else 0
        return len(self._members) + remote

    def send_all(
        self, data: str | bytes, exclude: Member | None = None, local: bool = False
    ) -> None:
        """Queue ``data`` for every client (of every node unless ``local``) but ``exclude``;
        encoded once for all.  Bytes cross the cluster as they are."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        elif not isinstance(data, bytes):
            data = bytes(data)
        self._fanout([m for m in self._members if m is not exclude], data)
        if self.link is not None and not local:
            self.link.publish(ToAll(data))

    def broadcast(self, text: str, local: bool = False) -> None:
        """Send ``[Broadcast] <text>`` as one line to everyone (seed section 3)."""
        self.send_all(f"[Broadcast] {text}\n", local=local)

    def deliver(self, event: Event) -> None:
        """An event from another node of the cluster, for this node's clients."""
        if isinstance(event, RoomLine):
            self.room.deliver_line(event.text, event.stamp)
        elif isinstance(event, Direct):
            self.room.deliver_direct(event.key, event.text)
        elif isinstance(event, ToAll):
            self._fanout(list(self._members), event.data)
        elif isinstance(event, ClientCount):
            pass  # the link keeps the counts itself
