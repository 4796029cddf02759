"""The cluster's wire format: events between nodes and the records of who holds a name.

Sans-IO: bytes in, values out, and back; no Redis, no clock.  One message carries every
event one node had for the others in one loop turn (Centrifugo's auto-pipelining: one
PUBLISH instead of one per event).  A message is the sending node's id, a newline, and a
JSON array of events, so that a node can skip its own messages by their first bytes,
without decoding them.  Payloads that are not valid UTF-8 travel as Base64, intact.

Anyone who can reach Redis can publish on the channel: :func:`decode_message` raises
:class:`ClusterCodecError`, and only that, for anything malformed.
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
    """Text for every chat member who had joined by ``stamp`` (ns since the epoch)."""

    text: str
    stamp: int


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


Event = RoomLine | Direct | ToAll | ClientCount


def node_prefix(node: str) -> bytes:
    """The first bytes of every message ``node`` sends."""
    return node.encode() + NODE_SEPARATOR


def _encode_event(event: Event) -> list[object]:
    if isinstance(event, RoomLine):
        return ["r", _deliverable(event.text), _integer(event.stamp)]
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


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClusterCodecError(f"expected an integer, got {type(value).__name__}")
    return value


def _decode_event(item: object) -> Event:
    if not isinstance(item, list) or len(item) < 2:
        raise ClusterCodecError("an event must be a list of a kind and its fields")
    kind = item[0]
    fields = item[1:]
    if kind == "r" and len(fields) == 2:
        return RoomLine(_deliverable(fields[0]), _integer(fields[1]))
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
