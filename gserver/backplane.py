"""Chat and broadcasts across processes and machines, through Redis: a :class:`ClusterLink`.

Every process (node) delivers to its own clients first, then tells the others through one
Redis pub/sub channel; what comes in from the channel is delivered to local clients.  The
wire format is ``protocol/cluster.py``'s: every event of one loop turn in one PUBLISH.
Names live in a Redis hash, each tagged with its holder's node; a node proves it is alive
with a heartbeat key that expires, so a crashed node's users vanish within ``NODE_TTL``.

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
from collections.abc import Callable
from typing import Any, cast

import gevent
import gevent.event
import redis
from gevent.queue import Full, Queue

from gserver.protocol.cluster import (
    ClientCount,
    ClusterCodecError,
    Event,
    Holder,
    decode_holders,
    decode_message,
    encode_holder,
    encode_message,
    node_prefix,
)
from gserver.registry import LinkState, Registry

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
        pool = redis.BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_SIZE, timeout=POOL_WAIT, decode_responses=True, **options
        )
        self.client = redis.Redis(connection_pool=pool)
        # Events arrive as bytes (a payload need not be UTF-8): a client of their own.
        self._raw = redis.Redis.from_url(self.url, **options)
        self._scripts = {
            name: self.client.register_script(source)
            for name, source in (("hold", _HOLD), ("release", _RELEASE))
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
            for item in batch:
                if item is _COUNT:
                    self._count_queued = False
                    events.append(ClientCount(self._count))
                else:
                    events.append(item)
            if not self.up:
                self.events_dropped += len(events)
                continue
            message, events = self._encode(events)
            try:
                pipe = self.client.pipeline(transaction=False)
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
        while True:
            here = {key: (name, stamp) for key, name, stamp in room.local_entries()}
            changed = [(key, held) for key, held in here.items() if announced.get(key) != held]
            gone = [key for key in announced if key not in here]
            if not changed and not gone:
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
