"""The cluster's wire format: events between nodes and the records of who holds a name.

Sans-IO: bytes in, values out, and back; no Redis, no clock.  One message carries every
event one node had for the others in one loop turn (Centrifugo's auto-pipelining: one
PUBLISH instead of one per event).  A message is the sending node's id, a newline, and a
JSON array of events, so that a node can skip its own messages by their first bytes,
without decoding them.  Payloads that are not valid UTF-8 travel as Base64, intact.

Anyone who can reach Redis can publish on the channel: :func:`decode_message` raises
:class:`ClusterCodecError`, and only that, for anything malformed.

Besides events: the records the nodes keep in Redis (who holds a name, who sits in a room,
a room's recent lines), each written here and read back here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

NODE_SEPARATOR = b"\n"


class ClusterCodecError(ValueError):
    """A message or name record from the cluster is malformed."""


@dataclass(frozen=True)
class RoomLine:
    """Text for the members of ``room`` (as written, ``#dev``) who were in it by ``stamp``
    (ns since the epoch); ``keep``: a line for the room's history.  A node of an older
    release sent no room: its lines are for the default room."""

    text: str
    stamp: int
    room: str | None = None
    keep: bool = False


@dataclass(frozen=True)
class Direct:
    """Text for whoever holds the name with this key (a ``/msg``)."""

    key: str
    text: str


@dataclass(frozen=True)
class ToAll:
    """Bytes for every client of every node (``Registry.send_all``)."""

    data: bytes


@dataclass(frozen=True)
class ClientCount:
    """The sending node's number of connected clients, now."""

    count: int


@dataclass(frozen=True)
class Kick:
    """An operator's ``/kick`` (or, with ``ban_minutes``, ``/ban``) of whoever holds the name
    with this key: the node that holds them carries it out (it knows their address)."""

    key: str
    by: str
    reason: str = ""
    ban_minutes: int | None = None


@dataclass(frozen=True)
class Ban:
    """``address`` is refused on every node until ``until`` (ms since the epoch)."""

    address: str
    until: int


@dataclass(frozen=True)
class Unban:
    """The ban on ``address`` is lifted."""

    address: str


Event = RoomLine | Direct | ToAll | ClientCount | Kick | Ban | Unban


def node_prefix(node: str) -> bytes:
    """The first bytes of every message ``node`` sends."""
    return node.encode() + NODE_SEPARATOR


def _encode_event(event: Event) -> list[object]:
    if isinstance(event, RoomLine):
        line: list[object] = ["r", _deliverable(event.text), _integer(event.stamp)]
        if event.room is None and not event.keep:
            return line  # as older releases wrote it
        return [*line, _optional_text(event.room), _boolean(event.keep)]
    if isinstance(event, Direct):
        return ["d", _text(event.key), _deliverable(event.text)]
    if isinstance(event, ToAll):
        if not isinstance(event.data, bytes):
            raise ClusterCodecError(f"expected bytes, got {type(event.data).__name__}")
        try:
            return ["a", event.data.decode("utf-8")]
        except UnicodeDecodeError:
            return ["b", base64.b64encode(event.data).decode("ascii")]
    if isinstance(event, ClientCount):
        return ["c", _integer(event.count)]
    if isinstance(event, Kick):
        by, reason = _deliverable(event.by), _deliverable(event.reason)
        return ["kick", _text(event.key), by, reason, _optional_integer(event.ban_minutes)]
    if isinstance(event, Ban):
        return ["ban", _text(event.address), _integer(event.until)]
    if isinstance(event, Unban):
        return ["unban", _text(event.address)]
    raise ClusterCodecError(f"not an event: {type(event).__name__}")


def encode_message(node: str, events: Sequence[Event]) -> bytes:
    """One message carrying ``events`` from ``node``; :class:`ClusterCodecError` for an
    event that no node could deliver (see :func:`_deliverable`), or of the wrong types."""
    body = json.dumps([_encode_event(e) for e in events], ensure_ascii=False)
    # surrogatepass: the surrogate escapes that stand for undecodable bytes in a text come
    # back as they were (surrogateescape would turn two of them into one other character).
    return node_prefix(node) + body.encode("utf-8", "surrogatepass")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ClusterCodecError(f"expected text, got {type(value).__name__}")
    return value


def _deliverable(value: object) -> str:
    """Text that a node can send to its clients: encodable as delivery encodes it (UTF-8,
    with surrogate escapes for the bytes that were not).  A lone surrogate of any other kind
    could only end the part that tried to deliver it."""
    text = _text(value)
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ClusterCodecError(f"undeliverable text: {exc.reason}") from None
    return text


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClusterCodecError(f"expected an integer, got {type(value).__name__}")
    return value


def _optional_integer(value: object) -> int | None:
    return None if value is None else _integer(value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ClusterCodecError(f"expected true or false, got {type(value).__name__}")
    return value


def _decode_event(item: object) -> Event:
    if not isinstance(item, list) or len(item) < 2:
        raise ClusterCodecError("an event must be a list of a kind and its fields")
    kind = item[0]
    fields = item[1:]
    if kind == "r" and len(fields) in (2, 4):
        text, stamp = _deliverable(fields[0]), _integer(fields[1])
        if len(fields) == 2:  # from a node of an older release
            return RoomLine(text, stamp)
        return RoomLine(text, stamp, _optional_text(fields[2]), _boolean(fields[3]))
    if kind == "d" and len(fields) == 2:
        return Direct(_text(fields[0]), _deliverable(fields[1]))
    if kind == "a" and len(fields) == 1:
        try:
            return ToAll(_text(fields[0]).encode("utf-8"))
        except UnicodeEncodeError:  # "a" is for payloads that are UTF-8; others are "b"
            raise ClusterCodecError("a lone surrogate in a UTF-8 payload") from None
    if kind == "b" and len(fields) == 1:
        try:
            return ToAll(base64.b64decode(_text(fields[0]), validate=True))
        except binascii.Error as exc:
            raise ClusterCodecError(f"bad Base64 payload: {exc}") from None
    if kind == "c" and len(fields) == 1:
        return ClientCount(_integer(fields[0]))
    if kind == "kick" and len(fields) == 4:
        by, reason = _deliverable(fields[1]), _deliverable(fields[2])
        return Kick(_text(fields[0]), by, reason, _optional_integer(fields[3]))
    if kind == "ban" and len(fields) == 2:
        return Ban(_text(fields[0]), _integer(fields[1]))
    if kind == "unban" and len(fields) == 1:
        return Unban(_text(fields[0]))
    # Named by type unless text: the repr of a deeply nested kind could overflow the stack.
    what = repr(kind[:20]) if isinstance(kind, str) else type(kind).__name__
    raise ClusterCodecError(f"unknown event {what} with {len(fields)} fields")


def decode_message(raw: bytes) -> tuple[str, list[Event]]:
    """(sending node, its events) of one message."""
    node, separator, body = raw.partition(NODE_SEPARATOR)
    if not separator or not node:
        raise ClusterCodecError("no sending node before the events")
    try:
        items = json.loads(body.decode("utf-8", "surrogatepass"))
    except ValueError as exc:  # including bytes that are not UTF-8
        raise ClusterCodecError(f"events are not JSON: {exc}") from None
    except RecursionError:  # arrays nested deeper than Python's recursion limit
        raise ClusterCodecError("events are nested too deep") from None
    if not isinstance(items, list):
        raise ClusterCodecError("events must be a JSON array")
    return node.decode("utf-8", "replace"), [_decode_event(item) for item in items]


# -- who holds a name ----------------------------------------------------------------------
# The names hash maps a name's key to its holders, one "node|stamp|name" per line.  Usually
# one; two after a split in which a name was taken on both sides (both stay visible, and
# the name stays taken until both have gone).  The Lua scripts in backplane.py read the
# same format: a node id never holds "|" or a newline, a name never holds a newline.


@dataclass(frozen=True)
class Holder:
    node: str
    stamp: int
    name: str


def encode_holders(holders: Sequence[Holder]) -> str:
    for holder in holders:
        if "|" in holder.node or "\n" in holder.node + holder.name:
            raise ClusterCodecError("a node id holds no '|' or newline, a name no newline")
    return "\n".join(f"{h.node}|{h.stamp}|{h.name}" for h in holders)


def encode_holder(holder: Holder) -> str:
    return encode_holders([holder])


def decode_holders(record: str) -> list[Holder]:
    holders = []
    for entry in record.split("\n"):
        node, _, rest = entry.partition("|")
        stamp, separator, name = rest.partition("|")
        if not node or not separator or not (stamp.isascii() and stamp.isdigit()) or not name:
            raise ClusterCodecError(f"malformed name record {entry[:80]!r}")
        holders.append(Holder(node, int(stamp), name))
    return holders


# -- who sits in which room ------------------------------------------------------------------
# Each room's members hash maps "node|uid" (a member of that node) to "stamp|op|name": when
# they entered the room (ns since the epoch, the room's arrival order), "1" for an operator
# else "0", and the name as they spell it now.  The Lua scripts in backplane.py read the
# node from the field the same way.


@dataclass(frozen=True)
class Seat:
    """One member of a room, on one node: ``uid`` tells them apart on their node."""

    uid: int
    stamp: int
    name: str
    operator: bool = False


def seat_field(node: str, uid: int) -> str:
    if "|" in node or "\n" in node:
        raise ClusterCodecError("a node id holds no '|' or newline")
    return f"{node}|{uid}"


def encode_seat(node: str, seat: Seat) -> tuple[str, str]:
    """The (field, value) of ``seat`` in its room's members hash."""
    if "\n" in seat.name:
        raise ClusterCodecError("a name holds no newline")
    value = f"{_integer(seat.stamp)}|{1 if seat.operator else 0}|{seat.name}"
    return seat_field(node, _integer(seat.uid)), value


def decode_seat(field: str, value: str) -> tuple[str, Seat]:
    """(node, seat) of one entry of a room's members hash."""
    node, separator, uid = field.rpartition("|")
    stamp, separator2, rest = value.partition("|")
    operator, separator3, name = rest.partition("|")
    if (
        not node
        or not separator
        or not (separator2 and separator3)
        or not _is_number(uid)
        or not _is_number(stamp)
        or operator not in ("0", "1")
        or not name
    ):
        raise ClusterCodecError(f"malformed seat {field[:80]!r}: {value[:80]!r}")
    return node, Seat(int(uid), int(stamp), name, operator == "1")


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


# -- a room's recent lines ---------------------------------------------------------------------
# Each room's history is a Redis list, newest first, of "ms|line": when the line was said
# (ms since the epoch) and the line as it was delivered.


def encode_said(moment_ms: int, line: str) -> str:
    return f"{_integer(moment_ms)}|{_deliverable(line)}"


def decode_said(entry: str) -> tuple[int, str]:
    moment, separator, line = entry.partition("|")
    if not separator or not _is_number(moment):
        raise ClusterCodecError(f"malformed history entry {entry[:80]!r}")
    return int(moment), _deliverable(line)
