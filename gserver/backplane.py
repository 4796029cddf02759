"""Chat and broadcasts across processes and machines, through Redis.

Every process (node) delivers to its own clients first, then tells the others through one
Redis pub/sub channel; what comes in from the channel is delivered to local clients.
Names live in a Redis hash, each tagged with its node; a node proves it is alive with a
heartbeat key that expires, so a crashed node's users vanish within ``NODE_TTL`` seconds.

Delivery across nodes is what Redis pub/sub gives: at most once.  Within a node it stays
exactly once and in order, whatever Redis does.  While Redis is away each node goes on
serving its own clients, logs it, retries with backoff, and republishes its presence when
Redis is back.  Handlers never wait on a dead Redis: remote publishing goes through a
queue drained by one greenlet, and lookups fall back to what this node knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import gevent
import redis
from gevent.queue import Full, Queue

from gserver.protocol.chat import Member, name_key
from gserver.registry import ChatRoom

if TYPE_CHECKING:
    from gserver.registry import Registry

HEARTBEAT_SECONDS = 2.0
NODE_TTL = 6  # seconds: a node silent this long is gone, and so are its users
QUEUE_LIMIT = 10_000  # events waiting for Redis; past it, the oldest are dropped
BACKOFF_MAX = 10.0
PRUNE_EVERY_BEATS = 15  # about every 30 s
POOL_SIZE = 32  # Redis connections per process (the subscriber holds one of its own)
POOL_WAIT = 5.0  # seconds a greenlet may wait for a free connection
REDIS_ERRORS = (redis.RedisError, OSError)

# Claim a name unless a live node other than ours holds it (atomic in Redis).
_CLAIM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local node = string.match(current, '^(.-)|')
  if node ~= ARGV[4] and redis.call('EXISTS', ARGV[3] .. node) == 1 then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# Release a name only if this node holds it.
_RELEASE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and string.match(current, '^(.-)|') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class Backplane:
    """One node's link to the cluster through Redis."""

    def __init__(self, url: str, prefix: str, log: Any) -> None:
        self.url = url
        self.prefix = prefix
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}".replace("|", "_")
        self.log = log.bind(backplane=redact(url), node=self.node)
        self.client: redis.Redis = None  # type: ignore[assignment]  # made in start()
        self.channel = f"{prefix}:events"
        self.names_key = f"{prefix}:names"
        self.counts_key = f"{prefix}:counts"
        self.node_key_prefix = f"{prefix}:node:"
        self.up = False
        self.events_in = 0
        self.events_out = 0
        self.events_dropped = 0
        # Made in start(): a gevent queue needs the event loop, and a --workers master must
        # fork before any loop exists.
        self._queue: Queue[tuple[str, Any]] | None = None
        self._registry: Registry | None = None
        self._greenlets: list[gevent.Greenlet] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, registry: Registry) -> None:
        """Connect and join the cluster.  Nothing before this touches the event loop: a
        --workers master builds a server to check its settings, then forks."""
        self._registry = registry
        # A bounded pool that makes greenlets wait their turn: with a plain pool, hundreds
        # of clients joining at once would exhaust it ("Too many connections") and look
        # like Redis going down.
        pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=5,
            decode_responses=True,
        )
        self.client = redis.Redis(connection_pool=pool)
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)
        self._queue = Queue(QUEUE_LIMIT)
        self._greenlets = [
            gevent.spawn(self._subscribe_forever),
            gevent.spawn(self._publish_forever),
            gevent.spawn(self._heartbeat_forever),
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
                for key in self._registry.room.local_keys():
                    self._release(keys=[self.names_key], args=[key, self.node], client=pipe)
                pipe.execute()
        except (*REDIS_ERRORS, gevent.Timeout):
            pass

    def _mark(self, up: bool, error: BaseException | None = None) -> None:
        if up and not self.up:
            self.log.info("backplane_up")
        elif not up and self.up:
            self.log.error("backplane_down", error=str(error))
        self.up = up

    # -- greenlets ------------------------------------------------------------------------

    def _subscribe_forever(self) -> None:
        failures = 0
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                self._announce()
                self._mark(True)
                failures = 0
                while True:
                    message = pubsub.get_message(timeout=HEARTBEAT_SECONDS)
                    if message is not None:
                        self._receive(message["data"])
                    if not self.up:  # another greenlet saw an error; the link is back
                        self._announce()
                        self._mark(True)
            except REDIS_ERRORS as exc:
                if failures == 0:
                    self.log.error("backplane_down", error=str(exc))
                self.up = False
                failures += 1
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    pubsub.close()
            # Back off, so that a dead Redis costs a retry now and then, not a spinning loop.
            gevent.sleep(min(BACKOFF_MAX, 0.25 * 2 ** min(failures, 6)))

    def _publish_forever(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            batch = [queue.get()]
            while len(batch) < 500 and not queue.empty():
                batch.append(queue.get_nowait())
            if not self.up:
                self.events_dropped += len(batch)
                continue
            try:
                pipe = self.client.pipeline(transaction=False)
                for kind, value in batch:
                    if kind == "event":
                        pipe.publish(self.channel, value)
                    elif kind == "release":
                        self._release(keys=[self.names_key], args=[value, self.node], client=pipe)
                pipe.execute()
                self.events_out += sum(1 for kind, _ in batch if kind == "event")
            except REDIS_ERRORS as exc:
                self.events_dropped += len(batch)
                self._mark(False, exc)

    def _heartbeat_forever(self) -> None:
        beats = 0
        while True:
            if self.up:
                try:
                    self.client.set(self.node_key_prefix + self.node, "1", ex=NODE_TTL)
                    beats += 1
                    if beats % PRUNE_EVERY_BEATS == 0:
                        self._prune()
                except REDIS_ERRORS as exc:
                    self._mark(False, exc)
            gevent.sleep(HEARTBEAT_SECONDS)

    def _prune(self) -> None:
        """Forget names and counts of nodes whose heartbeat has expired, and names this node
        no longer holds (a release lost while Redis was away), so that nothing piles up."""
        assert self._registry is not None
        held = cast(dict[str, str], self.client.hgetall(self.names_key))
        counts = cast(dict[str, str], self.client.hgetall(self.counts_key))
        owners = {key: value.split("|", 1)[0] for key, value in held.items()}
        nodes = sorted(set(owners.values()) | set(counts) - {self.node})
        pipe = self.client.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self.node_key_prefix + node)
        dead = {node for node, alive in zip(nodes, pipe.execute(), strict=True) if not alive}
        local = set(self._registry.room.local_keys())
        stale = [
            k
            for k, node in owners.items()
            if node in dead or (node == self.node and k not in local)
        ]
        pipe = self.client.pipeline(transaction=False)
        for key in stale:
            owner = owners[key]
            self._release(keys=[self.names_key], args=[key, owner], client=pipe)
        for node in dead & set(counts):
            pipe.hdel(self.counts_key, node)
        pipe.execute()

    def _announce(self) -> None:
        """(Re)publish this node's presence: heartbeat, client count, the names it holds."""
        assert self._registry is not None
        self.client.set(self.node_key_prefix + self.node, "1", ex=NODE_TTL)
        self.client.hset(self.counts_key, self.node, len(self._registry))
        for key, name, seq in self._registry.room.local_entries():
            value = f"{self.node}|{seq}|{name}"
            if not self._claim(
                keys=[self.names_key], args=[key, value, self.node_key_prefix, self.node]
            ):
                self.log.warning("name_conflict", name=name)
        self._prune()

    # -- events ---------------------------------------------------------------------------

    def _enqueue(self, kind: str, value: Any) -> None:
        if self._queue is None:  # not started: there is no cluster to tell yet
            return
        try:
            self._queue.put_nowait((kind, value))
        except Full:
            self.events_dropped += 1

    def publish(self, event: dict[str, Any]) -> None:
        """Tell the other nodes; never blocks (at most once, like pub/sub itself)."""
        event["n"] = self.node
        self._enqueue("event", json.dumps(event, ensure_ascii=False))

    def _receive(self, raw: str) -> None:
        # Anyone who can reach Redis can publish on the channel: a malformed event is
        # logged and skipped, and must never end the subscriber.
        try:
            event = json.loads(raw)
            if not isinstance(event, dict) or event.get("n") == self.node:
                return
            if self._registry is not None:
                self.events_in += 1
                self._registry.deliver_remote(event)
        except Exception as exc:
            self.log.warning("bad_event", error=str(exc), payload=str(raw)[:200])

    # -- names and counts -----------------------------------------------------------------

    def claim(self, key: str, name: str, seq: int) -> bool:
        """Hold ``name`` cluster-wide; True when Redis is away (this node decides alone)."""
        if not self.up:
            return True
        value = f"{self.node}|{seq}|{name}"
        try:
            return bool(
                self._claim(
                    keys=[self.names_key], args=[key, value, self.node_key_prefix, self.node]
                )
            )
        except REDIS_ERRORS as exc:
            self._mark(False, exc)
            return True

    def release(self, key: str) -> None:
        self._enqueue("release", key)

    def _live_entries(self) -> list[tuple[int, str, str, str]] | None:
        """(seq, key, name, node) of every name held by a live node; None without Redis."""
        if not self.up:
            return None
        try:
            held = cast(dict[str, str], self.client.hgetall(self.names_key))
            entries = []
            for key, value in held.items():
                node, seq, name = value.split("|", 2)
                entries.append((int(seq), key, name, node))
            nodes = sorted({node for *_, node in entries})
            pipe = self.client.pipeline(transaction=False)
            for node in nodes:
                pipe.exists(self.node_key_prefix + node)
            alive = {node for node, exists in zip(nodes, pipe.execute(), strict=True) if exists}
        except (*REDIS_ERRORS, ValueError) as exc:
            self._mark(False, exc)
            return None
        return sorted(e for e in entries if e[3] in alive)

    def names(self) -> list[str] | None:
        entries = self._live_entries()
        return None if entries is None else [name for _, _, name, _ in entries]

    def holder(self, key: str) -> str | None:
        """The name as its holder spelled it, if a live node holds it."""
        for _, held_key, name, _ in self._live_entries() or []:
            if held_key == key:
                return name
        return None

    def set_count(self, count: int) -> None:
        """Publish this node's client count at once, so that the next greeting on any
        node counts this client (a round trip on the connecting client's greenlet)."""
        if not self.up:
            return
        try:
            self.client.hset(self.counts_key, self.node, count)
        except REDIS_ERRORS as exc:
            self._mark(False, exc)

    def remote_count(self) -> int:
        """Clients connected to the other live nodes (0 without Redis)."""
        if not self.up:
            return 0
        try:
            counts = cast(dict[str, str], self.client.hgetall(self.counts_key))
            others = [node for node in counts if node != self.node]
            pipe = self.client.pipeline(transaction=False)
            for node in others:
                pipe.exists(self.node_key_prefix + node)
            alive = pipe.execute() if others else []
            return sum(int(counts[n]) for n, ok in zip(others, alive, strict=True) if ok)
        except (*REDIS_ERRORS, ValueError) as exc:
            self._mark(False, exc)
            return 0


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


class ClusterChatRoom(ChatRoom):
    """The chat room of one node, kept in step with every other node through Redis."""

    def __init__(self, backplane: Backplane) -> None:
        super().__init__()
        self.backplane = backplane

    def join(self, member: Member, name: str, stamp: int | None = None) -> bool:
        # Claim in the cluster first, join here after: until the claim is settled this
        # client is not in the room and receives nothing meant for its members.
        key = name_key(name)
        if self.holds(key):
            return False
        stamp = time.time_ns() if stamp is None else stamp
        if not self.backplane.claim(key, name, stamp):
            return False
        # Someone here may have taken it while we waited on Redis: then they hold it.
        return super().join(member, name, stamp)

    def rename(self, member: Member, new_name: str, stamp: int | None = None) -> bool:
        # As in join: settle the claim in the cluster first, then rename here.
        old_key = self.key_of(member)
        new_key = name_key(new_name)
        holder = self.holder_of(new_key)
        if old_key is None or (holder is not None and holder is not member):
            return False
        stamp = time.time_ns() if stamp is None else stamp
        if not self.backplane.claim(new_key, new_name, stamp):
            return False
        if not super().rename(member, new_name, stamp):
            return False  # someone here took it meanwhile, and holds it in Redis too
        if new_key != old_key:
            self.backplane.release(old_key)
        return True

    def leave(self, member: Member) -> None:
        key = self.key_of(member)
        super().leave(member)
        if key is not None:
            self.backplane.release(key)

    def names(self) -> list[str]:
        cluster = self.backplane.names()
        if cluster is None:
            return super().names()
        # Local names the cluster does not show yet (joined while Redis was away) go last.
        shown = {name_key(n) for n in cluster}
        return cluster + [n for n in super().names() if name_key(n) not in shown]

    def publish(self, text: str, exclude: Member | None = None) -> None:
        super().publish(text, exclude)
        self.backplane.publish({"t": "room", "text": text, "ts": time.time_ns()})

    def send_to(self, name: str, text: str) -> str | None:
        delivered = super().send_to(name, text)
        if delivered is not None:
            return delivered
        key = name_key(name)
        holder = self.backplane.holder(key)
        if holder is not None:
            self.backplane.publish({"t": "to", "key": key, "text": text})
        return holder
