"""Who is online, and delivery to them; the port a cluster backplane plugs into.

:class:`Registry` holds every connected client of one server; :class:`ChatRoom` the named
members of the chat.  Both only queue text on their members (``send`` never blocks), so a
fan-out to thousands costs one append per client and never waits on a socket.

A cluster is whatever implements :class:`ClusterLink` (``backplane.py`` does, on Redis):
the registry and the room tell it what happened here and ask it what happened elsewhere;
they never import it, and without one they serve one process alone.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gserver.protocol.chat import Entered, Member, Removal, name_key
from gserver.protocol.cluster import (
    Ban,
    ClientCount,
    Direct,
    Event,
    Kick,
    RoomLine,
    Seat,
    ToAll,
    Unban,
)
from gserver.protocol.rooms import room_key
from gserver.rooms import HISTORY_BYTES, Rooms

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


@dataclass(frozen=True)
class RoomView:
    """A room as the cluster has it: its name as first written, its topic, and its last
    lines, oldest first, as (milliseconds since the epoch, line)."""

    display: str
    topic: str | None = None
    history: list[tuple[int, str]] = field(default_factory=list)


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

    # Rooms: this node's members sit in the cluster's rooms; the cluster keeps the rooms'
    # names, topics and history.  Each call answers None while the link is down.

    def sit(
        self,
        room: str,
        seat: Seat,
        leaving: str | None = None,
        max_rooms: int = 0,
        lines: int = 0,
    ) -> tuple[Entered, RoomView] | None:
        """This node's member ``seat`` in ``room`` (made unless ``max_rooms`` rooms exist;
        0: no limit), out of the room ``leaving`` (which ends if nobody is left in it); or
        the seat written anew where it is (a new name, operator rights).  The room, with at
        most ``lines`` of its history."""
        ...

    def stand(self, room: str, uid: int) -> None:
        """This node's member ``uid`` is no longer in ``room`` (which ends, with its topic
        and history, if nobody on a live node is left in it and it is not the default)."""

    def look(self, room: str, lines: int = 0) -> RoomView | None:
        """The room, with at most ``lines`` of its history."""
        ...

    def seats(self, room: str) -> list[Seat] | None:
        """Who sits in ``room`` on the other live nodes."""
        ...

    def room_counts(self) -> list[tuple[str, int]] | None:
        """Every room the cluster has (as first written), with its members on the other
        live nodes."""
        ...

    def set_topic(self, room: str, text: str) -> None: ...

    def record(self, room: str, moment_ms: int, line: str, lines: int) -> None:
        """Keep ``line`` in the room's history, the last ``lines`` (never blocks)."""

    def ban(self, address: str, until_ms: int) -> None:
        """Refuse ``address`` on every node until then (never blocks)."""

    def unban(self, address: str) -> None:
        """Lift the ban on ``address`` on every node (never blocks)."""


class _Entry:
    """A member of this node's room: its name as typed, its place in the join order,
    since when it is in its room (``entered``: it hears what other nodes say there from
    then on, and a rename keeps it), and ``uid``, its seat in the cluster's rooms."""

    __slots__ = ("entered", "member", "name", "order", "uid")

    def __init__(self, member: Member, name: str, order: int, entered: int, uid: int) -> None:
        self.member = member
        self.name = name
        self.order = order
        self.entered = entered
        self.uid = uid


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
        self._entry_of: dict[Member, _Entry] = {}
        self._uids = itertools.count(1)
        # What the cluster answered when a member last entered a room: its topic and
        # history, shown to them right after (without another round trip).  The session
        # asks for them without yielding in between, and history() takes them away.
        self._fresh: tuple[str, RoomView] | None = None
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
        entry = _Entry(member, name, stamp, stamp, next(self._uids))
        arrival = None
        if self.link is not None:
            # Seated in the cluster's default room before this node's, likewise; the name
            # stays taken here meanwhile.
            self._pending.add(key)
            try:
                seat = Seat(entry.uid, stamp, name)
                lines = self.rooms.history_lines
                arrival = self.link.sit(self.rooms.default, seat, lines=lines)
            finally:
                self._pending.discard(key)
        self._by_key[key] = entry
        self._key_of[member] = key
        self._entry_of[member] = entry
        self._address[member] = address
        self.rooms.place(member)
        if arrival is not None:
            self._fresh = (self.rooms.default_key, arrival[1])
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
        self._sit(member, entry, self.rooms.room_of(member))  # the new name in the room
        return True

    def _sit(
        self,
        member: Member,
        entry: _Entry,
        room: str,
        leaving: str | None = None,
        max_rooms: int = 0,
        lines: int = 0,
        stamp: int | None = None,
    ) -> tuple[Entered, RoomView] | None:
        """Seat ``entry`` in the cluster's ``room`` (see ClusterLink.sit); None without a
        link or while it is down.  A member removed (kicked) while the cluster answered
        leaves the seat it was just given."""
        if self.link is None:
            return None
        seat = Seat(
            entry.uid,
            entry.entered if stamp is None else stamp,
            entry.name,
            member in self.rooms.operators,
        )
        arrival = self.link.sit(room, seat, leaving, max_rooms, lines)
        if arrival is not None and self._entry_of.get(member) is not entry:
            self.link.stand(room, entry.uid)
        return arrival

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
        room = self.rooms.room_of(member)
        self.rooms.leave(member)
        self._address.pop(member, None)
        entry = self._entry_of.pop(member, None)
        if key is None:
            return False
        del self._by_key[key]
        if self.link is not None and entry is not None:
            # The name stays taken here until its seat and its hold are gone from the
            # cluster, in that order (see _pending).
            self._pending.add(key)
            try:
                self.link.stand(room, entry.uid)
                self._release(key)
            finally:
                self._pending.discard(key)
        return True

    def names(self, room: str | None = None) -> list[str]:
        """The names in ``room`` in arrival order, operators marked ``@`` (on every live
        node when the cluster is reachable); without a room, everyone's names in join order
        (the whole cluster's when it is reachable)."""
        if room is None:
            cluster = self.link.names() if self.link is not None else None
            if cluster is None:
                return self._local_names()
            # Local names the cluster does not show yet (joined while it was away) go last.
            shown = {name_key(n) for n in cluster}
            return cluster + [n for n in self._local_names() if name_key(n) not in shown]
        here = self._seated_in(room)
        elsewhere = self.link.seats(room) if self.link is not None else None
        if elsewhere is None:
            return [name for _, name in here]
        # This node's members as it knows them (their seats may be on their way), the
        # other nodes' as the cluster has them: all in the order they came into the room.
        there = [(seat.stamp, ("@" if seat.operator else "") + seat.name) for seat in elsewhere]
        return [name for _, name in sorted(here + there, key=lambda seated: seated[0])]

    def _seated_in(self, room: str) -> list[tuple[int, str]]:
        """(since when, name marked) of this node's members in ``room``, in arrival order."""
        operators = self.rooms.operators
        seated = []
        for member in self.rooms.members(room):
            entry = self._entry_of.get(member)
            if entry is not None:
                seated.append((entry.entered, ("@" if member in operators else "") + entry.name))
        return seated

    def _local_names(self) -> list[str]:
        return [entry.name for entry in self._by_key.values()]

    def __len__(self) -> int:
        return len(self._by_key)

    def local_entries(self) -> list[tuple[str, str, int]]:
        """(key, name, join-order stamp) of every member of this node's room."""
        return [(key, entry.name, entry.order) for key, entry in self._by_key.items()]

    def local_seats(self) -> list[tuple[str, Seat]]:
        """(room, seat) of every member of this node, as the cluster's rooms should have
        them."""
        operators = self.rooms.operators
        return [
            (
                self.rooms.room_of(entry.member),
                Seat(entry.uid, entry.entered, entry.name, entry.member in operators),
            )
            for entry in self._by_key.values()
        ]

    def publish(
        self, room: str, text: str, exclude: Member | None = None, keep: bool = False
    ) -> None:
        """``text`` to everyone in ``room`` but ``exclude``, on every node; ``keep``: a line
        for the room's history."""
        data = text.encode("utf-8", "surrogateescape")
        self._fanout([m for m in self.rooms.members(room) if m is not exclude], data)
        self._fresh = None
        if self.link is None:
            if keep:
                self.rooms.record(room, text)
            return
        stamp = time.time_ns()
        if keep and self.rooms.history_lines > 0:
            self.rooms.record(room, text, stamp // 1_000_000)
            self.link.record(room, stamp // 1_000_000, text, self.rooms.history_lines)
        self.link.publish(RoomLine(text, stamp, room, keep))

    # -- rooms ----------------------------------------------------------------------------

    def room_of(self, member: Member) -> str:
        return self.rooms.room_of(member)

    def enter(self, member: Member, room: str) -> tuple[Entered, str]:
        """Move ``member`` to ``room``: the cluster decides first (max_rooms counts its
        rooms, and it has the room's name as first written, its topic and history), then
        this node follows; while the cluster is away, this node alone."""
        current = self.rooms.room_of(member)
        if room_key(current) == room_key(room):
            return Entered.ALREADY_THERE, current
        entry = self._entry_of.get(member)
        if entry is not None and self.link is not None:
            stamp = time.time_ns()
            lines = self.rooms.history_lines
            arrival = self._sit(member, entry, room, current, self.rooms.max_rooms, lines, stamp)
            if arrival is not None:
                entered, view = arrival
                if entered is not Entered.JOINED:
                    return entered, room
                if self._entry_of.get(member) is not entry:  # removed meanwhile: nothing to say
                    return Entered.ALREADY_THERE, view.display
                self.rooms.enter(member, view.display, limit=False)
                entry.entered = stamp
                self._fresh = (room_key(view.display), view)
                return Entered.JOINED, view.display
        entered, display = self.rooms.enter(member, room)
        if entry is not None and entered is Entered.JOINED:
            entry.entered = time.time_ns()
        return entered, display

    def listing(self) -> list[tuple[str, int]]:
        """Every room with anyone in it on any live node, and the default room always."""
        here = self.rooms.listing()
        cluster = self.link.room_counts() if self.link is not None else None
        if cluster is None:
            return here
        rooms = {room_key(display): (display, people) for display, people in here}
        for display, people in cluster:
            _, local = rooms.get(room_key(display), (display, 0))
            rooms[room_key(display)] = (display, people + local)  # as the cluster writes it
        default = self.rooms.default_key
        return [(d, people) for key, (d, people) in rooms.items() if people or key == default]

    def topic(self, room: str) -> str | None:
        fresh = self._fresh
        if fresh is not None and fresh[0] == room_key(room):
            return fresh[1].topic
        view = self.link.look(room) if self.link is not None else None
        return self.rooms.topic(room) if view is None else view.topic

    def set_topic(self, room: str, text: str) -> None:
        self._fresh = None
        self.rooms.set_topic(room, text)
        if self.link is not None:
            self.link.set_topic(room, text)

    def history(self, room: str) -> list[tuple[int, str]]:
        fresh, self._fresh = self._fresh, None
        lines = self.rooms.history_lines
        if lines <= 0:
            return []
        if fresh is not None and fresh[0] == room_key(room):
            return _bounded(fresh[1].history)
        view = self.link.look(room, lines) if self.link is not None else None
        return self.rooms.history(room) if view is None else _bounded(view.history)

    # -- operators ------------------------------------------------------------------------

    def make_operator(self, member: Member) -> None:
        self.rooms.operators.add(member)
        entry = self._entry_of.get(member)
        if entry is not None:
            self._sit(member, entry, self.rooms.room_of(member))  # marked @ everywhere

    def remove(self, name: str, removal: Removal) -> str | None:
        """Kick (and ban, with ``ban_minutes``) the holder of ``name`` on whichever node
        holds them: they are told why and closed, their room is told instead of a leave
        notice; their name, or None."""
        key = name_key(name)
        held = self.remove_here(key, removal)
        if self.link is None:
            return held
        if held is None:
            held = self.link.holder(key)
            if held is None:
                return None
        # Told to every node even when done here: after a split, two users may hold it.
        self.link.publish(Kick(key, removal.by, removal.reason, removal.ban_minutes))
        return held

    def remove_here(self, key: str, removal: Removal) -> str | None:
        """The removal of the holder of ``key`` if they are on this node; their name."""
        entry = self._by_key.get(key)
        if entry is None:
            return None
        member, held = entry.member, entry.name
        room = self.rooms.room_of(member)
        address = self._address.get(member, "")
        member.send(removal.to_them())
        self.leave(member)  # removed now: their session's own end announces nothing
        member.close("kicked" if removal.ban_minutes is None else "banned")
        if removal.ban_minutes is not None and address:
            until = time.time() + removal.ban_minutes * 60
            self.rooms.ban(address, removal.ban_minutes, until)
            if self.link is not None:
                self.link.ban(address, int(until * 1000))
        self.publish(room, removal.to_room(held), exclude=member)
        return held

    def is_banned(self, address: str) -> bool:
        return self.rooms.is_banned(address)

    def bans(self) -> list[tuple[str, float]]:
        return self.rooms.bans()

    def unban(self, address: str) -> bool:
        lifted = self.rooms.unban(address)
        if self.link is not None:
            self.link.unban(address)
        return lifted

    def local_bans(self) -> dict[str, float]:
        """Every ban this node enforces: address -> when it ends (``time.time()``)."""
        now = time.time()
        return {address: now + left for address, left in self.rooms.bans()}

    def replace_bans(self, bans: dict[str, float]) -> None:
        """Every ban, as the cluster has them (address -> when it ends)."""
        self.rooms.replace_bans(bans)

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

    def deliver_line(
        self, text: str, stamp: int, room: str | None = None, keep: bool = False
    ) -> None:
        """A line said elsewhere at ``stamp`` in ``room`` (None: the default room): its
        members here who came into it later do not see it."""
        room = self.rooms.default if room is None else room
        data = text.encode("utf-8", "surrogateescape")
        entry_of = self._entry_of
        self._fanout(
            [
                member
                for member in self.rooms.members(room)
                if (entry := entry_of.get(member)) is not None and entry.entered <= stamp
            ],
            data,
        )
        if keep:
            self.rooms.record(room, text, stamp // 1_000_000)

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
            self.room.deliver_line(event.text, event.stamp, event.room, event.keep)
        elif isinstance(event, Direct):
            self.room.deliver_direct(event.key, event.text)
        elif isinstance(event, ToAll):
            self._fanout(list(self._members), event.data)
        elif isinstance(event, ClientCount):
            pass  # the link keeps the counts itself
        elif isinstance(event, Kick):
            self.room.remove_here(event.key, Removal(event.by, event.reason, event.ban_minutes))
        elif isinstance(event, Ban):
            self.room.rooms.ban(event.address, 0, until=event.until / 1000)
        elif isinstance(event, Unban):
            self.room.rooms.unban(event.address)


def _bounded(history: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The newest lines of ``history`` that fit in a room's history bytes, oldest first."""
    size = 0
    for index in range(len(history) - 1, -1, -1):
        size += len(history[index][1])
        if size > HISTORY_BYTES:
            return history[index + 1 :]
    return history
