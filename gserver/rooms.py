"""The chat's rooms on one node: who is in which room, in arrival order; topics, the recent
lines of each room, operators, and bans.

Part of the registry (``ChatRoom`` uses it); it only keeps state and reads the clock, and
delivers nothing itself.  A room other than the default one ends, with its topic and
history, when its last member leaves it.
"""

from __future__ import annotations

import time
from collections import deque

from gserver.protocol.chat import Entered, Member
from gserver.protocol.rooms import room_display, room_key

# Each room's history is bounded in bytes as well as in lines.
HISTORY_BYTES = 256 * 1024


class Room:
    """One room: its name as first written, its members in arrival order, its topic and
    its last lines."""

    __slots__ = ("display", "history", "history_bytes", "members", "topic")

    def __init__(self, display: str) -> None:
        self.display = display
        self.members: dict[Member, None] = {}
        self.topic: str | None = None
        self.history: deque[tuple[int, str]] = deque()
        self.history_bytes = 0


class Rooms:
    """Every room of this node, and every named member's room."""

    def __init__(
        self, default_room: str = "lobby", max_rooms: int = 1000, history_lines: int = 0
    ) -> None:
        display = room_display(default_room)
        if display is None:
            raise ValueError(f"not a room name: {default_room!r}")
        self.default = display
        self.default_key = room_key(display)
        self.max_rooms = max_rooms
        self.history_lines = history_lines
        self._rooms: dict[str, Room] = {self.default_key: Room(display)}
        self._room_of: dict[Member, Room] = {}
        self.operators: set[Member] = set()
        self._bans: dict[str, float] = {}  # address -> when the ban ends (time.time())

    # -- membership -----------------------------------------------------------------------

    def place(self, member: Member) -> None:
        """A new member: into the default room, last."""
        self._move(member, self._rooms[self.default_key])

    def enter(self, member: Member, wanted: str, limit: bool = True) -> tuple[Entered, str]:
        """Move ``member`` to the room ``wanted`` (made if new, unless ``max_rooms`` rooms
        exist and ``limit``: the cluster may have decided already)."""
        key = room_key(wanted)
        room = self._rooms.get(key)
        if room is not None and self._room_of.get(member) is room:
            return Entered.ALREADY_THERE, room.display
        if room is None:
            if limit and len(self._rooms) >= self.max_rooms:
                return Entered.TOO_MANY_ROOMS, wanted
            room = self._rooms[key] = Room(wanted)
        self._move(member, room)
        return Entered.JOINED, room.display

    def _move(self, member: Member, room: Room) -> None:
        self._leave_room(member)
        room.members[member] = None
        self._room_of[member] = room

    def leave(self, member: Member) -> None:
        self._leave_room(member)
        self.operators.discard(member)

    def _leave_room(self, member: Member) -> None:
        room = self._room_of.pop(member, None)
        if room is None:
            return
        del room.members[member]
        key = room_key(room.display)
        if not room.members and key != self.default_key:
            del self._rooms[key]

    def room_of(self, member: Member) -> str:
        room = self._room_of.get(member)
        return self.default if room is None else room.display

    def members(self, display: str) -> list[Member]:
        room = self._rooms.get(room_key(display))
        return [] if room is None else list(room.members)

    def listing(self) -> list[tuple[str, int]]:
        """(room, members) of every room: those with anyone in them, and the default."""
        return [(room.display, len(room.members)) for room in self._rooms.values()]

    def __contains__(self, display: object) -> bool:
        return isinstance(display, str) and room_key(display) in self._rooms

    # -- topics and history -----------------------------------------------------------------

    def topic(self, display: str) -> str | None:
        room = self._rooms.get(room_key(display))
        return None if room is None else room.topic

    def set_topic(self, display: str, text: str) -> None:
        room = self._rooms.get(room_key(display))
        if room is not None:
            room.topic = text

    def history(self, display: str) -> list[tuple[int, str]]:
        room = self._rooms.get(room_key(display))
        return [] if room is None else list(room.history)

    def record(self, display: str, line: str, moment_ms: int | None = None) -> None:
        """Keep ``line`` in the room's history (when history is on)."""
        room = self._rooms.get(room_key(display))
        if room is None or self.history_lines <= 0:
            return
        moment = time.time_ns() // 1_000_000 if moment_ms is None else moment_ms
        room.history.append((moment, line))
        room.history_bytes += len(line)
        while room.history and (
            len(room.history) > self.history_lines or room.history_bytes > HISTORY_BYTES
        ):
            _, dropped = room.history.popleft()
            room.history_bytes -= len(dropped)

    # -- bans -----------------------------------------------------------------------------

    def ban(self, address: str, minutes: int, until: float | None = None) -> None:
        self._bans[address] = time.time() + minutes * 60 if until is None else until

    def unban(self, address: str) -> bool:
        self._forget_expired()
        return self._bans.pop(address, None) is not None

    def is_banned(self, address: str) -> bool:
        until = self._bans.get(address)
        if until is None:
            return False
        if until <= time.time():
            del self._bans[address]
            return False
        return True

    def bans(self) -> list[tuple[str, float]]:
        """(address, seconds left) of every ban in force."""
        self._forget_expired()
        now = time.time()
        return [(address, until - now) for address, until in self._bans.items()]

    def replace_bans(self, bans: dict[str, float]) -> None:
        """Every ban, as the cluster has them (address -> when it ends)."""
        self._bans = dict(bans)

    def _forget_expired(self) -> None:
        now = time.time()
        for address in [a for a, until in self._bans.items() if until <= now]:
            del self._bans[address]
