"""Chat and broadcasts across processes and machines, through Redis: a :class:`ClusterLink`.

Every process (node) delivers to its own clients first, then tells the others through one
Redis pub/sub channel; what comes in from the channel is delivered to local clients.  The
wire format is ``protocol/cluster.py``'s: every event of one loop turn in one PUBLISH.
Names live in a Redis hash, each tagged with its holder's node; a node proves it is alive
with a heartbeat key that expires, so a crashed node's users vanish within ``NODE_TTL``.
Rooms too: each member's seat (tagged likewise), each room's name as first written, its
topic and its last lines, and the bans, which every node mirrors for its connects.

Delivery across nodes is what Redis pub/sub gives: at most once.  Within a node it stays
exactly once and in order, whatever Redis does.  While Redis is away each node goes on
serving its own clients, logs it once, retries with backoff, and republishes its presence
when Redis is back.  Nothing on a client's connect or disconnect waits on Redis: counts go
through the publishing queue and are read from what the heartbeat and the channel keep.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import gevent
import gevent.event
import redis
from gevent.queue import Full, Queue

from gserver.protocol.chat import Entered
from gserver.protocol.cluster import (
    Ban,
    ClientCount,
    ClusterCodecError,
    Event,
    Holder,
    Seat,
    Unban,
    decode_holders,
    decode_message,
    decode_said,
    decode_seat,
    encode_holder,
    encode_message,
    encode_said,
    encode_seat,
    node_prefix,
)
from gserver.protocol.rooms import room_key
from gserver.registry import LinkState, Registry, RoomView

HEARTBEAT_SECONDS = 2.0
NODE_TTL = 6  # seconds: a node silent this long is gone, and so are its users
QUEUE_LIMIT = 10_000  # events waiting for Redis; past it, the newest are dropped
BATCH_EVENTS = 500  # events carried by one PUBLISH at most
BACKOFF_MAX = 10.0
FIRST_ATTEMPT_WAIT = 5.0  # seconds a claim waits, as the node starts, for Redis to answer
RESTART_PAUSE = 1.0  # before a part of the backplane that crashed is started again
PRUNE_EVERY_BEATS = 15  # about every 30 s
POOL_SIZE = 32  # Redis connections per process (the subscriber holds one of its own)
POOL_WAIT = 5.0  # seconds a greenlet may wait for a free connection
REDIS_ERRORS = (redis.RedisError, OSError)
_COUNT = object()  # in the publishing queue: this node's count has changed

# The names hash maps a name's key to its holders, one "node|stamp|name" per line (see
# protocol/cluster.py).  Hold a name for this node (ARGV[4]): its entry replaces any it had,
# beside the entries of other live nodes, and dead nodes' entries go.  Unless ARGV[5] is
# "1" (a re-announcement after an outage, which holds whatever a split did), a name that
# another live node holds is refused, but not when this node holds it too: a node that
# holds it already (after a split) may spell it anew.  0: refused; 1: held alone;
# 2: held beside another live node.
_HOLD = r"""
local current = redis.call('HGET', KEYS[1], ARGV[1])
local kept = {}
local ours = false
if current then
  for entry in string.gmatch(current, '[^\n]+') do
    local node = string.match(entry, '^([^|]*)|')
    if node == ARGV[4] then
      ours = true
    elseif redis.call('EXISTS', ARGV[3] .. node) == 1 then
      table.insert(kept, entry)
    end
  end
end
if #kept > 0 and not ours and ARGV[5] ~= '1' then return 0 end
table.insert(kept, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], table.concat(kept, '\n'))
if #kept > 1 then return 2 end
return 1
"""
# Drop node ARGV[2]'s hold on a name; only the hold stamped ARGV[3] when that is given (a
# prune must not drop a claim made since it looked).  The name goes when nobody holds it.
_RELEASE = r"""
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local kept = {}
for entry in string.gmatch(current, '[^\n]+') do
  local node, stamp = string.match(entry, '^([^|]*)|([^|]*)|')
  if node ~= ARGV[2] or (ARGV[3] ~= '' and stamp ~= ARGV[3]) then table.insert(kept, entry) end
end
if #kept == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], table.concat(kept, '\n'))
end
return 1
"""


# -- rooms ----------------------------------------------------------------------------------
# The rooms hash maps a room's key to its name as first written; a room's members hash maps
# "node|uid" to "stamp|op|name" (protocol/cluster.py's seats); the topics hash maps a room's
# key to its topic; a room's history is a list of "ms|line", newest first, cut to
# history_lines; the bans hash maps an address to when its ban ends (ms since the epoch).
# A room but the default one ends, with its members hash, topic and history, when nobody on
# a live node is left in it.  Shared by the scripts below.
_ROOMS_LIB = r"""
local function node_of(field) return string.match(field, '^([^|]*)|') end
local function live(nodes, node_prefix, node)
  local known = nodes[node]
  if known == nil then
    known = redis.call('EXISTS', node_prefix .. node) == 1
    nodes[node] = known
  end
  return known
end
local function end_if_empty(rooms, topics, members, history, key, default, node_prefix)
  if key == default then return end
  local nodes, cursor = {}, '0'
  repeat
    local page = redis.call('HSCAN', members, cursor, 'COUNT', 100)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      local node = node_of(page[2][i])
      if node and live(nodes, node_prefix, node) then return end
    end
  until cursor == '0'
  redis.call('DEL', members, history)
  redis.call('HDEL', rooms, key)
  redis.call('HDEL', topics, key)
end
"""
# Seat a member (field ARGV[3], value ARGV[4]) in room ARGV[1] (KEYS[3], history KEYS[4]),
# made as ARGV[2] unless ARGV[5] > 0 rooms exist; out of room ARGV[6] (KEYS[5] and KEYS[6];
# '' for none), which may end.  {0}: too many rooms; else {1, the room as first written,
# its topic, its last ARGV[9] lines}.  A room whose last members were on nodes that died
# ended with them: it is made anew, without their topic and history.
_SIT = (
    _ROOMS_LIB
    + r"""
if ARGV[6] ~= ARGV[1] then
  end_if_empty(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[7], ARGV[8])
end
local display = redis.call('HGET', KEYS[1], ARGV[1])
if not display then
  local limit = tonumber(ARGV[5])
  if limit > 0 and redis.call('HLEN', KEYS[1]) >= limit then return {0} end
  display = ARGV[2]
  redis.call('HSET', KEYS[1], ARGV[1], display)
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
if ARGV[6] ~= '' and ARGV[6] ~= ARGV[1] then
  redis.call('HDEL', KEYS[5], ARGV[3])
  end_if_empty(KEYS[1], KEYS[2], KEYS[5], KEYS[6], ARGV[6], ARGV[7], ARGV[8])
end
local history = {}
if tonumber(ARGV[9]) > 0 then history = redis.call('LRANGE', KEYS[4], 0, tonumber(ARGV[9]) - 1) end
return {1, display, redis.call('HGET', KEYS[2], ARGV[1]), history}
"""
)
# A member (field ARGV[1]) leaves room ARGV[2], which may end.
_STAND = (
    _ROOMS_LIB
    + r"""
redis.call('HDEL', KEYS[3], ARGV[1])
end_if_empty(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)
# The seats of room KEYS[1] held by live nodes but ARGV[2], as field, value, ...
_ROSTER = (
    _ROOMS_LIB
    + r"""
local seats, nodes = {}, {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local node = node_of(flat[i])
  if node and node ~= ARGV[2] and live(nodes, ARGV[1], node) then
    table.insert(seats, flat[i])
    table.insert(seats, flat[i + 1])
  end
end
return seats
"""
)
# Every room (as first written) and its members on live nodes but ARGV[3], as room, count.
_COUNTS = (
    _ROOMS_LIB
    + r"""
local counts, nodes = {}, {}
local rooms = redis.call('HGETALL', KEYS[1])
for i = 1, #rooms, 2 do
  local count = 0
  for _, field in ipairs(redis.call('HKEYS', ARGV[1] .. rooms[i] .. ':members')) do
    local node = node_of(field)
    if node and node ~= ARGV[3] and live(nodes, ARGV[2], node) then count = count + 1 end
  end
  table.insert(counts, rooms[i + 1])
  table.insert(counts, count)
end
return counts
"""
)
# Room ARGV[1]'s topic is ARGV[2] (only if it has none, when ARGV[4] is '1'), if the room
# is there (ARGV[3]: the default room, always there).
_TOPIC = r"""
if ARGV[1] ~= ARGV[3] and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[4] == '1' then return redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
# A line (ARGV[2]) for room ARGV[1]'s history (KEYS[2]), which keeps its last ARGV[3], if
# the room is still there: a line that comes after the room ended does not outlive it.
_RECORD = r"""
if ARGV[1] ~= ARGV[4] and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"""
# Seats of dead nodes go, and so do the rooms left empty by them; and bans that have ended
# (ARGV[4]: now, in ms).
_PRUNE_ROOMS = (
    _ROOMS_LIB
    + r"""
local nodes = {}
for _, key in ipairs(redis.call('HKEYS', KEYS[1])) do
  local members = ARGV[1] .. key .. ':members'
  for _, field in ipairs(redis.call('HKEYS', members)) do
    local node = node_of(field)
    if not node or not live(nodes, ARGV[2], node) then redis.call('HDEL', members, field) end
  end
  end_if_empty(KEYS[1], KEYS[2], members, ARGV[1] .. key .. ':history', key, ARGV[3], ARGV[2])
end
local bans = redis.call('HGETALL', KEYS[3])
for i = 1, #bans, 2 do
  local ends = tonumber(bans[i + 1])
  if not ends or ends <= tonumber(ARGV[4]) then redis.call('HDEL', KEYS[3], bans[i]) end
end
return 1
"""
)


class _Store:
    """In the publishing queue: a write to Redis, made in the pipeline of its loop turn
    before the events (so that a node told of it finds it there)."""

    __slots__ = ("apply",)

    def __init__(self, apply: Callable[[Any], Any]) -> None:
        self.apply = apply


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


class Backplane:
    """One node's link to the cluster through Redis."""

    def __init__(self, url: str, prefix: str, log: Any) -> None:
        self.url = url
        self.prefix = prefix
        host = socket.gethostname().replace("|", "_").replace("\n", "_")
        self.node = f"{host}:{os.getpid()}:{os.urandom(3).hex()}"
        self._own_prefix = node_prefix(self.node)
        self.log = log.bind(backplane=redact(url), node=self.node)
        self.channel = f"{prefix}:events"
        self.names_key = f"{prefix}:names"
        self.counts_key = f"{prefix}:counts"
        self.node_key_prefix = f"{prefix}:node:"
        self.rooms_key = f"{prefix}:rooms"
        self.topics_key = f"{prefix}:topics"
        self.bans_key = f"{prefix}:bans"
        self.room_key_prefix = f"{prefix}:room:"  # then the room's key and :members or :history
        self.up = False
        self.events_in = 0
        self.events_out = 0
        self.events_dropped = 0
        self._failed: set[str] = set()
        self._remote_counts: dict[str, int] = {}
        self._count = 0
        self._count_queued = False
        # Made in start(): Redis clients, scripts and a gevent queue belong to the worker
        # process, and a --workers master builds its settings before forking.
        self.client: redis.Redis = None  # type: ignore[assignment]
        self._raw: redis.Redis = None  # type: ignore[assignment]
        self._scripts: dict[str, Any] = {}
        self._queue: Queue[Any] | None = None
        # Set once the first attempt to reach Redis has ended, well or not.
        self._tried: gevent.event.Event | None = None
        self._registry: Registry | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._bans_announced: set[str] = set()  # what Redis had when this node announced

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, registry: Registry) -> None:
        """Connect and join the cluster."""
        self._registry = registry
        options: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            "health_check_interval": 5,
        }
        # A bounded pool that makes greenlets wait their turn: with a plain pool, hundreds
        # of clients joining at once would exhaust it ("Too many connections") and look
        # like Redis going down.
        # Lines and topics may hold the surrogate escapes of bytes that were not UTF-8: they
        # are stored as those bytes, and read back as the same escapes.
        pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT,
            decode_responses=True,
            encoding_errors="surrogateescape",
            **options,
        )
        self.client = redis.Redis(connection_pool=pool)
        # Events arrive as bytes (a payload need not be UTF-8): a client of their own.
        self._raw = redis.Redis.from_url(self.url, **options)
        self._scripts = {
            name: self.client.register_script(source)
            for name, source in (
                ("hold", _HOLD),
                ("release", _RELEASE),
                ("sit", _SIT),
                ("stand", _STAND),
                ("roster", _ROSTER),
                ("counts", _COUNTS),
                ("topic", _TOPIC),
                ("record", _RECORD),
                ("prune_rooms", _PRUNE_ROOMS),
            )
        }
        self._queue = Queue(QUEUE_LIMIT)
        self._tried = gevent.event.Event()
        self._greenlets = [
            gevent.spawn(self._supervise, "subscriber", self._subscribe_forever),
            gevent.spawn(self._supervise, "publisher", self._publish_forever),
            gevent.spawn(self._supervise, "heartbeat", self._heartbeat_forever),
        ]

    def stop(self) -> None:
        """Leave the cluster: our heartbeat, names and count go at once, not at TTL end."""
        gevent.killall(self._greenlets, block=False)
        if not self.up or self._registry is None:
            return
        try:
            with gevent.Timeout(2):
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(self.node_key_prefix + self.node)
                pipe.hdel(self.counts_key, self.node)
                pipe.publish(self.channel, encode_message(self.node, [ClientCount(0)]))
                for key, _, _ in self._registry.room.local_entries():
                    self._release(key, self.node, pipe=pipe)
                for room, seat in self._registry.room.local_seats():
                    self._stand(room_key(room), seat.uid, pipe)
                pipe.execute()
        except (*REDIS_ERRORS, gevent.Timeout):
            pass

    def state(self) -> LinkState:
        return LinkState(
            up=self.up,
            events_in=self.events_in,
            events_out=self.events_out,
            events_dropped=self.events_dropped,
            failed_parts=tuple(sorted(self._failed)),
        )

    def _mark(self, up: bool, error: BaseException | str | None = None) -> None:
        """Up or down; logged once per change, by whichever part saw it first."""
        if up and not self.up:
            self.log.info("backplane_up")
        elif not up and self.up:
            self.log.error("backplane_down", error=str(error))
        self.up = up

    def _supervise(self, part: str, run: Callable[[], None]) -> None:
        """Run one part of the backplane forever: a bug that ends it is logged, shows in
        /healthz and the metrics, and the part starts again after a pause."""
        while True:
            try:
                run()
            except Exception:
                self._failed.add(part)
                self.log.exception("backplane_part_failed", part=part)
                gevent.sleep(RESTART_PAUSE)

    def _working(self, part: str) -> None:
        """A part does its work (again): a failed one is reported restarted only now, so
        that /healthz stays 503 until, say, the subscriber is subscribed again."""
        if part in self._failed:
            self._failed.discard(part)
            self.log.info("backplane_part_restarted", part=part)

    # -- the parts ------------------------------------------------------------------------

    def _subscribe_forever(self) -> None:
        failures = 0
        while True:
            pubsub = self._raw.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                self._announce()
                self._mark(True)
                self._tried_once()
                self._working("subscriber")
                failures = 0
                while True:
                    message = pubsub.get_message(timeout=HEARTBEAT_SECONDS)
                    if message is not None:
                        self._receive(message["data"])
                    if not self.up:  # another part saw an error; the link is back
                        self._announce()
                        self._mark(True)
            except REDIS_ERRORS as exc:
                self._mark(False, exc)
                self._tried_once()
                failures += 1
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    pubsub.close()
            # Back off, so that a dead Redis costs a retry now and then, not a spinning loop.
            gevent.sleep(min(BACKOFF_MAX, 0.25 * 2 ** min(failures, 6)))

    def _tried_once(self) -> None:
        if self._tried is not None:
            self._tried.set()

    def _publish_forever(self) -> None:
        queue = self._queue
        assert queue is not None
        self._working("publisher")
        while True:
            batch = [queue.get()]
            while len(batch) < BATCH_EVENTS and not queue.empty():
                batch.append(queue.get_nowait())
            events: list[Event] = []
            stores: list[_Store] = []
            for item in batch:
                if item is _COUNT:
                    self._count_queued = False
                    events.append(ClientCount(self._count))
                elif isinstance(item, _Store):
                    stores.append(item)
                else:
                    events.append(item)
            if not self.up:
                self.events_dropped += len(events)
                continue
            message, events = self._encode(events)
            try:
                pipe = self.client.pipeline(transaction=False)
                for store in stores:
                    store.apply(pipe)
                if events:
                    pipe.publish(self.channel, message)
                if self._count_in(events):
                    pipe.hset(self.counts_key, self.node, self._count)
                pipe.execute()
                self.events_out += len(events)
            except REDIS_ERRORS as exc:
                self.events_dropped += len(events)
                self._mark(False, exc)

    def _encode(self, events: list[Event]) -> tuple[bytes, list[Event]]:
        """One message for ``events``, and the events it carries: one that cannot cross (a
        handler passed text no node could deliver, or bytes where text goes) is dropped
        and logged, and the rest of the batch goes on."""
        try:
            return encode_message(self.node, events), events
        except ClusterCodecError:
            pass
        good = []
        for event in events:
            try:
                encode_message(self.node, [event])
            except ClusterCodecError as exc:
                self.events_dropped += 1
                self.log.warning("event_not_published", kind=type(event).__name__, error=str(exc))
            else:
                good.append(event)
        return encode_message(self.node, good), good

    @staticmethod
    def _count_in(events: list[Event]) -> bool:
        return any(isinstance(event, ClientCount) for event in events)

    def _heartbeat_forever(self) -> None:
        beats = 0
        self._working("heartbeat")
        while True:
            if self.up:
                try:
                    if self._beat():
                        self._refresh_counts()
                        beats += 1
                        if beats % PRUNE_EVERY_BEATS == 0:
                            self._prune()
                    else:
                        # The other nodes have taken this one for dead (it stalled past
                        # NODE_TTL, or Redis lost its data) and may have given its users'
                        # names away: as after an outage, the subscriber announces again.
                        self._mark(False, "this node's heartbeat had expired")
                except REDIS_ERRORS as exc:
                    self._mark(False, exc)
            gevent.sleep(HEARTBEAT_SECONDS)

    def _beat(self) -> bool:
        """Refresh this node's heartbeat; False when it had expired meanwhile."""
        key = self.node_key_prefix + self.node
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(key)
        pipe.set(key, "1", ex=NODE_TTL)
        existed, _ = pipe.execute()
        return bool(existed)

    def _live_nodes(self, nodes: set[str]) -> set[str]:
        ordered = sorted(nodes)
        pipe = self.client.pipeline(transaction=False)
        for node in ordered:
            pipe.exists(self.node_key_prefix + node)
        return {node for node, alive in zip(ordered, pipe.execute(), strict=True) if alive}

    def _refresh_counts(self) -> None:
        """Every live node's count, as Redis has it (between the events that change them)."""
        counts = cast(dict[str, str], self.client.hgetall(self.counts_key))
        others = set(counts) - {self.node}
        alive = self._live_nodes(others) if others else set()
        fresh: dict[str, int] = {}
        for node in alive:
            with contextlib.suppress(ValueError):
                fresh[node] = int(counts[node])
        self._remote_counts = fresh

    def _held(self) -> dict[str, list[Holder]]:
        held = cast(dict[str, str], self.client.hgetall(self.names_key))
        records = {}
        for key, record in held.items():
            try:
                records[key] = decode_holders(record)
            except ClusterCodecError as exc:
                self.log.warning("bad_name_record", key=key, error=str(exc))
        return records

    def _prune(self) -> None:
        """Forget names and counts of nodes whose heartbeat has expired, and names this node
        no longer holds (a release lost while Redis was away), so that nothing piles up."""
        assert self._registry is not None
        records = self._held()
        counts = cast(dict[str, str], self.client.hgetall(self.counts_key))
        nodes = {h.node for holders in records.values() for h in holders} | set(counts)
        alive = self._live_nodes(nodes - {self.node}) | {self.node}
        local = {key for key, _, _ in self._registry.room.local_entries()}
        pipe = self.client.pipeline(transaction=False)
        for key, holders in records.items():
            for holder in holders:
                if holder.node not in alive or (holder.node == self.node and key not in local):
                    self._release(key, holder.node, holder.stamp, pipe)
        for node in set(counts) - alive:
            pipe.hdel(self.counts_key, node)
        pipe.execute()
        self._prune_rooms()

    def _announce(self) -> None:
        """(Re)publish this node's presence: heartbeat, client count, the names it holds.

        Until the caller marks the link up, claims and releases are decided here alone, so
        joins, renames and quits made while this runs are taken in too: names are announced
        until a pass finds nothing new, and the caller marks the link up without yielding
        after it (from then on claims and releases go to Redis as they are made).
        """
        assert self._registry is not None
        room = self._registry.room
        self.client.set(self.node_key_prefix + self.node, "1", ex=NODE_TTL)
        self.client.hset(self.counts_key, self.node, len(self._registry))
        self._refresh_counts()
        self._prune()
        # What Redis holds for this node now: left alone if still held here, else released.
        announced: dict[str, tuple[str, int] | None] = {
            key: None for key, holders in self._held().items() if self._holds(holders)
        }
        seated = self._announce_rooms()
        while True:
            here = {key: (name, stamp) for key, name, stamp in room.local_entries()}
            changed = [(key, held) for key, held in here.items() if announced.get(key) != held]
            gone = [key for key in announced if key not in here]
            # Then the seats, likewise: a pass that finds nothing to do does not yield.
            if not changed and not gone and not self._announce_seats(seated):
                return
            for key, (name, stamp) in changed:
                if self._hold(key, name, stamp, insist=True) == 2:
                    self.log.warning("name_conflict", name=name)
                announced[key] = (name, stamp)
            for key in gone:
                self._release(key, self.node)
                del announced[key]

    def _holds(self, holders: list[Holder]) -> bool:
        return any(holder.node == self.node for holder in holders)

    def _hold(self, key: str, name: str, stamp: int, insist: bool = False) -> int:
        """The hold script's answer: 0 refused, 1 held alone, 2 held beside another node."""
        record = encode_holder(Holder(self.node, stamp, name))
        args = [key, record, self.node_key_prefix, self.node, "1" if insist else "0"]
        return int(self._scripts["hold"](keys=[self.names_key], args=args))

    def _receive(self, raw: bytes) -> None:
        if raw.startswith(self._own_prefix):  # our own message: skipped without decoding
            return
        # Anyone who can reach Redis can publish on the channel: a malformed message is
        # logged and skipped, and never ends the subscriber.
        try:
            node, events = decode_message(raw)
        except ClusterCodecError as exc:
            self.log.warning(
                "bad_event", error=str(exc), payload=raw[:200].decode("utf-8", "replace")
            )
            return
        registry = self._registry
        for event in events:
            self.events_in += 1
            if isinstance(event, ClientCount):
                self._remote_counts[node] = event.count
            elif registry is not None:
                registry.deliver(event)

    # -- ClusterLink: what the registry and the room ask ------------------------------------

    def _enqueue(self, item: Any) -> bool:
        if self._queue is None:  # not started: there is no cluster to tell yet
            return False
        try:
            self._queue.put_nowait(item)
        except Full:
            self.events_dropped += 1
            return False
        return True

    def publish(self, event: Event) -> None:
        """Tell the other nodes; never blocks (at most once, like pub/sub itself)."""
        self._enqueue(event)

    def count_changed(self, count: int) -> None:
        """Coalesced: many connects in one loop turn become one count event."""
        self._count = count
        if not self._count_queued:
            self._count_queued = self._enqueue(_COUNT)

    def remote_count(self) -> int:
        """Clients of the other live nodes, as last known: updated by their count events
        as they happen, and checked against Redis every heartbeat (2 s), so a count is at
        most that old for a node that died without a word."""
        return sum(self._remote_counts.values()) if self.up else 0

    def claim(self, key: str, name: str, stamp: int) -> bool:
        """Hold ``name`` cluster-wide; True when Redis is away (this node decides alone)."""
        if not self.up and self._tried is not None and not self._tried.is_set():
            # The node is starting: Redis may well be there, and another node may hold the
            # name.  Deciding alone would give it a second holder.
            self._tried.wait(FIRST_ATTEMPT_WAIT)
        if not self.up:
            return True
        try:
            return self._hold(key, name, stamp) != 0
        except REDIS_ERRORS as exc:
            self._mark(False, exc)
            return True

    def release(self, key: str) -> None:
        """At once, on the caller's greenlet: a release that waited in a queue could undo a
        claim the same user made after it.  While Redis is away the prune catches up."""
        if not self.up:
            return
        try:
            self._release(key, self.node)
        except REDIS_ERRORS as exc:
            self._mark(False, exc)

    def _release(self, key: str, node: str, stamp: int | None = None, pipe: Any = None) -> None:
        args = [key, node, "" if stamp is None else str(stamp)]
        self._scripts["release"](keys=[self.names_key], args=args, client=pipe)

    def _live_holders(self) -> list[tuple[str, Holder]] | None:
        """(key, holder) of every name held by a live node, in join order."""
        if not self.up:
            return None
        try:
            records = self._held()
            nodes = {h.node for holders in records.values() for h in holders}
            alive = self._live_nodes(nodes) if nodes else set()
        except REDIS_ERRORS as exc:
            self._mark(False, exc)
            return None
        entries = [(key, h) for key, hs in records.items() for h in hs if h.node in alive]
        return sorted(entries, key=lambda entry: (entry[1].stamp, entry[0]))

    def names(self) -> list[str] | None:
        entries = self._live_holders()
        return None if entries is None else [holder.name for _, holder in entries]

    def holder(self, key: str) -> str | None:
        for held_key, holder in self._live_holders() or []:
            if held_key == key:
                return holder.name
        return None

    # -- ClusterLink: rooms ----------------------------------------------------------------

    def _room_keys(self, key: str) -> tuple[str, str]:
        """The members hash and the history list of the room with ``key``."""
        return f"{self.room_key_prefix}{key}:members", f"{self.room_key_prefix}{key}:history"

    def _default_key(self) -> str:
        assert self._registry is not None
        return self._registry.room.rooms.default_key

    def sit(
        self,
        room: str,
        seat: Seat,
        leaving: str | None = None,
        max_rooms: int = 0,
        lines: int = 0,
    ) -> tuple[Entered, RoomView] | None:
        if not self.up:
            return None
        old_key = "" if leaving is None else room_key(leaving)
        try:
            reply = self._sit(room_key(room), room, seat, old_key, max_rooms, lines)
        except REDIS_ERRORS as exc:
            self._mark(False, exc)
            return None
        if not reply or reply[0] == 0:
            return Entered.TOO_MANY_ROOMS, RoomView(room)
        _, display, topic, entries = reply
        return Entered.JOINED, RoomView(display, topic, self._history(entries))

    def _sit(
        self,
        key: str,
        display: str,
        seat: Seat,
        old_key: str = "",
        max_rooms: int = 0,
        lines: int = 0,
    ) -> Any:
        members, history = self._room_keys(key)
        old_members, old_history = self._room_keys(old_key or key)
        field, value = encode_seat(self.node, seat)
        keys = [self.rooms_key, self.topics_key, members, history, old_members, old_history]
        args = [key, display, field, value, max_rooms, old_key, self._default_key()]
        args += [self.node_key_prefix, lines]
        return self._scripts["sit"](keys=keys, args=args)

    def stand(self, room: str, uid: int) -> None:
        if not self.up:
            return  # the seat is put right when the link is back (_announce_seats)
        try:
            self._stand(room_key(room), uid)
        except REDIS_ERRORS as exc:
            self._mark(False, exc)

    def _stand(self, key: str, uid: int, pipe: Any = None) -> None:
        members, history = self._room_keys(key)
        field, _ = encode_seat(self.node, Seat(uid, 0, "-"))
        keys = [self.rooms_key, self.topics_key, members, history]
        args = [field, key, self._default_key(), self.node_key_prefix]
        self._scripts["stand"](keys=keys, args=args, client=pipe)

    def look(self, room: str, lines: int = 0) -> RoomView | None:
        if not self.up:
            return None
        key = room_key(room)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(self.rooms_key, key)
            pipe.hget(self.topics_key, key)
            if lines > 0:
                pipe.lrange(self._room_keys(key)[1], 0, lines - 1)
            display, topic, *entries = pipe.execute()
        except REDIS_ERRORS as exc:
            self._mark(False, exc)
            return None
        return RoomView(display or room, topic, self._history(entries[0] if entries else []))

    def _history(self, entries: list[str]) -> list[tuple[int, str]]:
        """A history list as Redis keeps it (newest first): oldest first, the bad left out."""
        history = []
        for entry in reversed(entries):
            try:
                history.append(decode_said(entry))
            except ClusterCodecError as exc:
                self.log.warning("bad_history_entry", error=str(exc))
        return history

    def seats(self, room: str) -> list[Seat] | None:
        if not self.up:
            return None
        members, _ = self._room_keys(room_key(room))
        try:
            flat = self._scripts["roster"](keys=[members], args=[self.node_key_prefix, self.node])
        except REDIS_ERRORS as exc:
            self._mark(False, exc)
            return None
        seats = []
        for field, value in zip(flat[::2], flat[1::2], strict=True):
            try:
                seats.append(decode_seat(field, value)[1])
            except ClusterCodecError as exc:
                self.log.warning("bad_seat", room=room, error=str(exc))
        return seats

    def room_counts(self) -> list[tuple[str, int]] | None:
        if not self.up:
            return None
        try:
            flat = self._scripts["counts"](
                keys=[self.rooms_key],
                args=[self.room_key_prefix, self.node_key_prefix, self.node],
            )
        except REDIS_ERRORS as exc:
            self._mark(False, exc)
            return None
        return [(str(room), int(count)) for room, count in zip(flat[::2], flat[1::2], strict=True)]

    def set_topic(self, room: str, text: str) -> None:
        if not self.up:
            return
        try:
            self._set_topic(room_key(room), text)
        except REDIS_ERRORS as exc:
            self._mark(False, exc)

    def _set_topic(self, key: str, text: str, only_if_none: bool = False, pipe: Any = None) -> None:
        args = [key, text, self._default_key(), "1" if only_if_none else "0"]
        self._scripts["topic"](keys=[self.rooms_key, self.topics_key], args=args, client=pipe)

    def record(self, room: str, moment_ms: int, line: str, lines: int) -> None:
        """Queued with the events of this loop turn: a line said costs no round trip."""
        try:
            entry = encode_said(moment_ms, line)
        except ClusterCodecError:
            return  # no node could deliver it: its event is refused too
        key = room_key(room)
        keys = [self.rooms_key, self._room_keys(key)[1]]
        args = [key, entry, lines, self._default_key()]
        self._enqueue(_Store(lambda pipe: self._scripts["record"](keys, args, client=pipe)))

    def ban(self, address: str, until_ms: int) -> None:
        """While Redis is away, this node's bans reach it when it is back (_announce_rooms)."""
        self._enqueue(_Store(lambda pipe: pipe.hset(self.bans_key, address, until_ms)))
        self.publish(Ban(address, until_ms))

    def unban(self, address: str) -> None:
        """While Redis is away, lifted on this node alone: when it is back, the bans that
        any node holds are every node's again."""
        self._enqueue(_Store(lambda pipe: pipe.hdel(self.bans_key, address)))
        self.publish(Unban(address))

    def _stored_bans(self) -> dict[str, int]:
        """The bans hash: address -> when the ban ends (ms), the malformed left out."""
        bans = {}
        for address, until in cast(dict[str, str], self.client.hgetall(self.bans_key)).items():
            with contextlib.suppress(ValueError):
                bans[address] = int(until)
        return bans

    def _prune_rooms(self) -> None:
        keys = [self.rooms_key, self.topics_key, self.bans_key]
        args = [self.room_key_prefix, self.node_key_prefix, self._default_key()]
        self._scripts["prune_rooms"](keys=keys, args=[*args, int(time.time() * 1000)])

    def _announce_rooms(self) -> dict[int, tuple[str, str]]:
        """(Re)publish this node's part of the rooms, once Redis is there again: the default
        room; bans set here while it was away, then every node's bans here; topics set here
        while it was away, for rooms that have none.  The seats this node has in Redis, for
        _announce_seats: uid -> (room key, seat as written)."""
        assert self._registry is not None
        room = self._registry.room
        rooms = room.rooms
        self.client.hsetnx(self.rooms_key, rooms.default_key, rooms.default)
        stored = self._stored_bans()
        told: list[Event] = []  # to the nodes that have announced already
        pipe = self.client.pipeline(transaction=False)
        for address, until in room.local_bans().items():
            until_ms = round(until * 1000)
            if stored.get(address, 0) + 1000 < until_ms:  # not one that Redis has already
                pipe.hset(self.bans_key, address, until_ms)
                stored[address] = until_ms
                told.append(Ban(address, until_ms))
        for display, _ in rooms.listing():
            topic = rooms.topic(display)
            if topic is not None:
                self._set_topic(room_key(display), topic, only_if_none=True, pipe=pipe)
        if told:
            pipe.publish(self.channel, encode_message(self.node, told))
        pipe.execute()
        now_ms = time.time() * 1000
        room.replace_bans({a: until / 1000 for a, until in stored.items() if until > now_ms})
        self._bans_announced = set(stored)
        # Every seat of this node, wherever it is.
        room_keys = cast(list[str], self.client.hkeys(self.rooms_key))
        pipe = self.client.pipeline(transaction=False)
        for key in room_keys:
            pipe.hgetall(self._room_keys(key)[0])
        seated: dict[int, tuple[str, str]] = {}
        for key, members in zip(room_keys, pipe.execute(), strict=True):
            for field, value in members.items():
                with contextlib.suppress(ClusterCodecError):
                    node, seat = decode_seat(field, value)
                    if node == self.node:
                        seated[seat.uid] = (key, value)
        return seated

    def _announce_seats(self, seated: dict[int, tuple[str, str]]) -> bool:
        """One pass: this node's members' seats where they are now, and none where they are
        not (joins, moves and quits made while Redis was away, or while this runs); bans
        set or lifted here meanwhile.  True when it wrote anything."""
        assert self._registry is not None
        room = self._registry.room
        wrote = False
        here = {seat.uid: (display, seat) for display, seat in room.local_seats()}
        for uid, (display, seat) in here.items():
            wanted = (room_key(display), encode_seat(self.node, seat)[1])
            if seated.get(uid) != wanted:
                old_key = seated[uid][0] if uid in seated else ""
                self._sit(wanted[0], display, seat, old_key)
                seated[uid] = wanted
                wrote = True
        for uid in [uid for uid in seated if uid not in here]:
            self._stand(seated.pop(uid)[0], uid)
            wrote = True
        bans = room.local_bans()
        told: list[Event] = []
        pipe = self.client.pipeline(transaction=False)
        for address in set(bans) - self._bans_announced:
            until_ms = round(bans[address] * 1000)
            pipe.hset(self.bans_key, address, until_ms)
            told.append(Ban(address, until_ms))
        for address in self._bans_announced - set(bans):
            pipe.hdel(self.bans_key, address)
            told.append(Unban(address))
        if told:
            pipe.publish(self.channel, encode_message(self.node, told))
            pipe.execute()
            wrote = True
        self._bans_announced = set(bans)
        return wrote
