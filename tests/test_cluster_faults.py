"""The cluster keeps its promises while Redis is healthy (issue 9): one holder per name,
nothing lost on a rename, both holders of a name taken during a split reachable and
visible, any payload across intact, a backplane part that dies restarted and reported,
and one `backplane_down` and one `backplane_up` per outage.

Real gserver processes, real sockets and a real redis-server, as in test_cluster.py.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gserver.testing.probes import wait_until
from tests.conftest import REDIS_SERVER, WAIT, Client, Redis, ServerProcess, chat_join
from tests.test_cluster import node, read_until_prefix
from tests.test_metrics import http_get

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)"
)

NAMES_KEY = "gserver:names"


# -- looking into Redis ---------------------------------------------------------------------


def _read_reply(stream: Any) -> Any:
    """One RESP2 reply from ``stream`` (a socket's binary file)."""
    line = stream.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise AssertionError(f"Redis error: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise AssertionError(f"unexpected reply {line!r}")


def redis_call(redis_server: Redis, *words: str) -> Any:
    """One command, as any client of that Redis could send it, and its reply."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=WAIT) as s:
        s.sendall(request.encode())
        with s.makefile("rb") as stream:
            return _read_reply(stream)


def held_names(redis_server: Redis) -> dict[str, list[tuple[str, str]]]:
    """The names hash: key -> sorted (node, name as spelled) of each holder."""
    flat = redis_call(redis_server, "HGETALL", NAMES_KEY)
    held: dict[str, list[tuple[str, str]]] = {}
    for key, record in zip(flat[::2], flat[1::2], strict=True):
        holders = []
        for entry in record.split("\n"):
            node_id, _stamp, name = entry.split("|", 2)
            holders.append((node_id, name))
        held[key] = sorted(holders)
    return held


def node_id(server: ServerProcess) -> str:
    return str(server.wait_for_log("backplane_up")["node"])


def chat_node(start_server: Any, redis_server: Redis, *args: str) -> ServerProcess:
    return node(start_server, redis_server, "--mode", "chat", *args)


_TAKEN_PROMPT = re.compile(rb"Username (\S+) is taken, choose another: ")


def name_reply(client: Client) -> str:
    """The answer to a name asked for: a welcome line, or a prompt to choose another."""
    while True:
        taken = _TAKEN_PROMPT.match(client.buffer)
        if taken:
            client.buffer = client.buffer[taken.end() :]
            return taken.group(0).decode()
        if b"\n" in client.buffer:
            return client.read_line()
        if not client._fill():
            raise AssertionError(f"closed before a reply; got {client.buffer!r}")


# Replies to one's own commands, as opposed to what others' actions broadcast.
_OWN_REPLIES = ("Welcome ", "You are ", "Username ", "Online users: ")


def next_reply(client: Client) -> str:
    """The next reply to this client's own command, skipping others' announcements."""
    while not (reply := name_reply(client)).startswith(_OWN_REPLIES):
        pass
    return reply


def ask_for_name(port: int, name: str) -> str:
    """What a new client who asks for ``name`` is told (it leaves at once)."""
    with Client(port) as client:
        client.read_until("Enter your username: ")
        client.send_line(name)
        reply = name_reply(client)
        client.send_line("/quit")
        return reply


# -- 1. one holder per name ----------------------------------------------------------------


def test_nick_away_and_back_in_one_packet_keeps_the_name_in_redis(
    start_server, redis_server: Redis
) -> None:
    one = chat_node(start_server, redis_server)
    two = chat_node(start_server, redis_server)
    alice = chat_join(one.port, "alice")
    # Every release and claim in one segment: they must reach Redis in the order typed.
    alice.send("/nick tmp\n/nick alice\n" * 3)
    for _ in range(3):
        assert alice.read_line() == "You are now known as tmp\n"
        assert alice.read_line() == "You are now known as alice\n"
    assert held_names(redis_server) == {"alice": [(node_id(one), "alice")]}
    assert ask_for_name(two.port, "alice") == "Username alice is taken, choose another: "
    assert ask_for_name(two.port, "tmp") == "Welcome tmp!\n"
    alice.close()


def test_two_clients_racing_for_one_name_on_one_node_keep_the_winners_spelling(
    start_server, redis_server: Redis
) -> None:
    one = chat_node(start_server, redis_server)
    # The second name a little after the first, by 0 to 300 microseconds: the second claim
    # reaches Redis while the first is still being answered, or is answered itself in a
    # later turn of the node's loop than the first.
    for round_, gap in enumerate(range(0, 320, 20)):
        spellings = (f"Bob{round_}", f"bOB{round_}")
        racers = [Client(one.port) for _ in spellings]
        for racer in racers:
            racer.read_until("Enter your username: ")
        racers[0].send_line(spellings[0])
        until = time.perf_counter() + gap / 1e6
        while time.perf_counter() < until:
            pass
        racers[1].send_line(spellings[1])
        replies = [name_reply(racer) for racer in racers]
        winners = [s for s, r in zip(spellings, replies, strict=True) if r == f"Welcome {s}!\n"]
        assert len(winners) == 1, replies
        in_redis = held_names(redis_server)[f"bob{round_}"]
        assert in_redis == [(node_id(one), winners[0])], f"gap {gap} us"
        for racer in racers:
            racer.close()


def test_names_given_up_and_asked_for_in_the_same_instant_on_one_node_stay_in_redis(
    start_server, redis_server: Redis
) -> None:
    """Users leave or rename as others ask for their names, all at once on one node: a
    release that reaches Redis after the newcomer's claim must not delete it."""
    one = chat_node(start_server, redis_server)
    two = chat_node(start_server, redis_server)
    me = node_id(one)
    for round_ in range(12):
        names = [f"n{round_}x{i}" for i in range(10)]
        holders = [chat_join(one.port, name) for name in names]
        newcomers = [Client(one.port) for _ in names]
        for newcomer in newcomers:
            newcomer.read_until("Enter your username: ")
        # Half of the holders quit, half rename, each as a newcomer asks for their name: the
        # release and the claim reach Redis on two connections within microseconds, in
        # either order (and which of two sockets the node reads first is not the order they
        # were written in, so both orders are tried).
        for i, (holder, newcomer) in enumerate(zip(holders, newcomers, strict=True)):
            pair = [
                (newcomer, names[i].upper()),
                (holder, "/quit" if i % 2 else f"/nick m{round_}x{i}"),
            ]
            for client, line in pair if round_ % 2 else reversed(pair):
                client.send_line(line)
        expected = {}
        for i, newcomer in enumerate(newcomers):
            reply = name_reply(newcomer)
            wanted = names[i].upper()
            assert reply in (
                f"Welcome {wanted}!\n",
                f"Username {wanted} is taken, choose another: ",
            )
            if reply.startswith("Welcome"):
                expected[names[i]] = [(me, wanted)]
        for i, holder in enumerate(holders):
            if i % 2:
                holder.read_to_close()
            else:
                assert next_reply(holder) == f"You are now known as m{round_}x{i}\n"
                expected[f"m{round_}x{i}"] = [(me, f"m{round_}x{i}")]
        assert held_names(redis_server) == expected, f"round {round_}"
        for key in list(expected)[:2]:
            assert ask_for_name(two.port, key).startswith(f"Username {key} is taken")
        for client in (*holders, *newcomers):
            client.close()
        wait_until(lambda: not held_names(redis_server), WAIT, "everyone gone")


def test_a_node_taken_for_dead_announces_its_names_again(start_server, redis_server: Redis) -> None:
    """A node whose heartbeat expired (stalled past its time to live) while Redis stayed up:
    others may have given its users' names away meanwhile; it finds out at its next beat
    and holds them again, beside whoever took them, as after an outage."""
    one = chat_node(start_server, redis_server)
    two = chat_node(start_server, redis_server)
    bob = chat_join(one.port, "bob")
    redis_call(redis_server, "DEL", f"gserver:node:{node_id(one)}")  # as if it had expired
    twin = Client(two.port)
    twin.read_until("Enter your username: ")
    twin.send_line("Bob")
    expected = [(node_id(one), "bob")]
    if name_reply(twin) == "Welcome Bob!\n":  # most likely: one looks dead
        expected.append((node_id(two), "Bob"))
    one.wait_for_log("backplane_down", error="this node's heartbeat had expired")
    one.wait_for_events("backplane_up", 2)
    assert held_names(redis_server) == {"bob": sorted(expected)}
    bob.close()
    twin.close()


class Chatter:
    """One simulated user of the randomized test: connected or not, named or not."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client: Client | None = None
        self.name: str | None = None  # as the server last confirmed it

    def connect(self) -> Client:
        self.client = Client(self.server.port)
        self.client.read_until("Enter your username: ")
        return self.client


def test_no_joins_renames_and_quits_on_two_nodes_leave_a_name_held_twice(
    start_server, redis_server: Redis
) -> None:
    """Seeded random rounds of joins, renames (several in one packet), quits and dropped
    connections, every user of a round acting in the same instant, over two nodes.  After
    each round: no name is held twice, Redis holds exactly the names held, spelled as held,
    and /users on both nodes lists them."""
    nodes = [chat_node(start_server, redis_server) for _ in range(2)]
    ids = {id(server): node_id(server) for server in nodes}
    pool = ["ann", "Ann", "ANN", "bo", "Bo", "cy", "CY", "dee"]  # four names, many spellings
    chatters = [Chatter(nodes[i % 2]) for i in range(8)]
    rng = random.Random(20240609)

    for round_ in range(60):
        # What some of the chatters do this round: the lines of one packet, or a close.
        plans: dict[Chatter, list[str]] = {}
        dropped: list[Chatter] = []
        for chatter in rng.sample(chatters, rng.randint(2, len(chatters))):
            if chatter.client is None:
                chatter.connect()
            if chatter.name is None:
                plans[chatter] = [rng.choice(pool)]  # a name; if taken, asked again
                continue
            roll = rng.random()
            if roll < 0.1:
                dropped.append(chatter)
            elif roll < 0.2:
                plans[chatter] = ["/quit"]
            else:
                commands = [f"/nick {rng.choice(pool)}" for _ in range(rng.randint(1, 3))]
                if rng.random() < 0.2:
                    commands.append("/quit")
                plans[chatter] = commands
        for chatter, commands in plans.items():
            assert chatter.client is not None
            chatter.client.send("".join(f"{c}\n" for c in commands))
        for chatter in dropped:
            assert chatter.client is not None
            chatter.client.close()  # without a word: the node finds out by itself
            chatter.client, chatter.name = None, None
        for chatter, commands in plans.items():
            client = chatter.client
            assert client is not None
            for command in commands:
                if command == "/quit":
                    client.read_to_close()
                    client.close()
                    chatter.client, chatter.name = None, None
                    break
                reply = next_reply(client)
                wanted = command.removeprefix("/nick ")
                if reply in (f"Welcome {wanted}!\n", f"You are now known as {wanted}\n"):
                    chatter.name = wanted
                else:
                    assert reply in (
                        f"Username {wanted} is taken, choose another: ",
                        f"Username {wanted} is taken\n",
                        f"You are already known as {wanted}\n",
                    ), f"round {round_}: {command!r} got {reply!r}"

        held = [c for c in chatters if c.name is not None]
        keys = [c.name.lower() for c in held if c.name is not None]
        assert len(keys) == len(set(keys)), f"round {round_}: a name held twice: {keys}"
        expected: dict[str, list[tuple[str, str]]] = {}
        for chatter in held:
            assert chatter.name is not None
            expected[chatter.name.lower()] = [(ids[id(chatter.server)], chatter.name)]
        # A dropped connection is noticed by its node a moment later; all else is settled.
        # (Waited for, then asserted, to show what differs.)
        if dropped:
            with contextlib.suppress(AssertionError):
                wait_until(lambda want=expected: held_names(redis_server) == want, WAIT, "")
        in_redis = held_names(redis_server)
        assert in_redis == expected, f"round {round_}: Redis holds {in_redis}, users {expected}"
        for server in nodes:
            asker = next((c for c in held if c.server is server), None)
            if asker is not None and asker.client is not None:
                asker.client.send_line("/users")
                listed = next_reply(asker.client).removeprefix("Online users: ").rstrip("\n")
                assert sorted(listed.split(", ")) == sorted(c.name for c in held if c.name)
    for chatter in chatters:
        if chatter.client is not None:
            chatter.client.close()


def test_a_name_asked_for_as_a_node_starts_is_checked_against_the_cluster(
    start_server, redis_server: Redis
) -> None:
    """A client who asks for a name before its node has reached Redis (Redis slow to answer
    as the node starts) is not given a name that another node holds: the claim waits for
    the node's first attempt to reach Redis, instead of deciding alone as if Redis were down."""
    one = chat_node(start_server, redis_server)
    alice = chat_join(one.port, "alice")
    redis_server.hang()
    try:
        two = start_server("--mode", "chat", "--backplane", redis_server.url)
        early = Client(two.port)
        early.read_until("Enter your username: ")
        early.send_line("alice")
        early.sock.settimeout(0.5)  # deciding alone, as if Redis were down, answers at once
        with pytest.raises(TimeoutError):
            name_reply(early)
        early.sock.settimeout(WAIT)
    finally:
        redis_server.resume()
    assert name_reply(early) == "Username alice is taken, choose another: "
    two.wait_for_log("backplane_up")
    assert not two.events("name_conflict")
    early.close()
    alice.close()


# -- 2. a rename loses nothing ----------------------------------------------------------------


def test_renaming_loses_no_line_published_on_another_node(
    start_server, redis_server: Redis
) -> None:
    senders_node = chat_node(start_server, redis_server, "--flood-rate", "0")
    receivers_node = chat_node(start_server, redis_server, "--flood-rate", "0")
    receiver = chat_join(receivers_node.port, "receiver")
    senders = [chat_join(senders_node.port, f"s{i}") for i in range(4)]
    for i in range(4):
        assert read_until_prefix(receiver, f"s{i} joined") == f"s{i} joined the chat\n"
    # 4 senders x 400 lines/s for a second, 8 lines a packet every 20 ms; each time, the
    # receiver renames at the moment the senders' lines are on their way to its node.
    periods, burst = 50, 8

    def send_lines() -> None:
        started = time.monotonic()
        for period in range(periods):
            for sender in senders:
                sender.send("".join(f"{period * burst + n}\n" for n in range(burst)))
            receiver.send_line(f"/nick receiver{period}")
            pause = started + (period + 1) * 0.02 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        for sender in senders:
            sender.send_line("end")

    sending = threading.Thread(target=send_lines, daemon=True)
    sending.start()
    got: dict[str, list[str]] = {f"s{i}": [] for i in range(4)}
    renamed = 0
    line_format = re.compile(r"\[(s\d)\]: (\S+)\n")
    while sum(1 for lines in got.values() if lines[-1:] == ["end"]) < len(got):
        line = receiver.read_line()
        said = line_format.fullmatch(line)
        if said is not None:
            got[said[1]].append(said[2])
        elif line.startswith("You are now known as "):
            renamed += 1
    sending.join(WAIT)
    every_line = [str(n) for n in range(periods * burst)] + ["end"]
    for name, lines in got.items():
        missing = len(every_line) - len(lines)
        assert lines == every_line, f"{name}: {missing} lines missing, or out of order"
    assert renamed == periods
    for client in (receiver, *senders):
        client.close()


# -- 3. after a split ---------------------------------------------------------------------------


def test_after_a_split_both_holders_of_a_name_are_reached_listed_and_keep_it_taken(
    start_server, redis_server: Redis
) -> None:
    one = chat_node(start_server, redis_server)
    two = chat_node(start_server, redis_server)
    redis_server.kill()
    one.wait_for_log("backplane_down")
    two.wait_for_log("backplane_down")
    # The split: each side gives the name to its own user.
    alices = {one: chat_join(one.port, "alice"), two: chat_join(two.port, "ALICE")}
    redis_server.start()
    for server in (one, two):
        server.wait_for_events("backplane_up", 2, timeout=30)
    conflicted = [server for server in (one, two) if server.events("name_conflict")]
    assert len(conflicted) == 1, "exactly one side learns that the name was taken twice"
    loser = conflicted[0]
    winner = two if loser is one else one
    carol = chat_join(one.port, "carol")
    dave = chat_join(two.port, "dave")

    # Both holders are listed everywhere.
    for asker in (carol, dave):
        asker.send_line("/users")
        listed = read_until_prefix(asker, "Online users: ").removeprefix("Online users: ")
        assert sorted(listed.rstrip("\n").split(", ")) == ["ALICE", "alice", "carol", "dave"]
    # A /msg from either side reaches both.
    for asker, sender, spelling in ((carol, "carol", "alice"), (dave, "dave", "ALICE")):
        asker.send_line(f"/msg Alice hi from {sender}")
        assert read_until_prefix(asker, "[you -> ") == f"[you -> {spelling}]: hi from {sender}\n"
        for holder in alices.values():
            wanted = f"[{sender} -> you]: hi from {sender}\n"
            assert read_until_prefix(holder, f"[{sender} -> ") == wanted
    # The name stays taken while either holder is here: first the winner in Redis leaves.
    for server in (one, two):
        assert ask_for_name(server.port, "alice").startswith("Username alice is taken")
    alices[winner].send_line("/quit")
    alices[winner].read_to_close()
    for server in (one, two):
        assert ask_for_name(server.port, "alice").startswith("Username alice is taken")
    for asker in (carol, dave):
        asker.send_line("/users")
        listed = read_until_prefix(asker, "Online users: ").removeprefix("Online users: ")
        still_here = "alice" if loser is one else "ALICE"
        assert sorted(listed.rstrip("\n").split(", ")) == sorted([still_here, "carol", "dave"])
    # Once both have gone, the name is free.
    alices[loser].send_line("/quit")
    alices[loser].read_to_close()
    assert ask_for_name(winner.port, "Alice") == "Welcome Alice!\n"
    for client in (carol, dave, *alices.values()):
        client.close()


# -- 4. any payload crosses; a part that dies is restarted and reported --------------------------


RAW_HANDLER = """
def handle(conn):
    conn.send("ready\\n")
    for line in conn.lines():
        if line == "raw":
            conn.registry.send_all(b"\\xff\\xfe\\x80 not text \\xed\\xa0\\x80\\n")
        elif line == "undeliverable":  # a lone surrogate: no node could send it to anyone
            conn.registry.room.send_to("somebody", "\\ud800\\n")
        else:
            conn.registry.send_all(f"text {line}\\n")
"""


def test_bytes_that_are_not_utf8_cross_the_backplane_intact(
    start_server, redis_server: Redis, tmp_path: Path
) -> None:
    (tmp_path / "rawcast.py").write_text(RAW_HANDLER)
    one = node(start_server, redis_server, "--handler", "rawcast:handle")
    two = node(start_server, redis_server, "--handler", "rawcast:handle")
    here, there = Client(one.port), Client(two.port)
    for client in (here, there):
        assert client.read_line() == "ready\n"
    here.send_line("raw")
    payload = b"\xff\xfe\x80 not text \xed\xa0\x80\n"
    assert here.read_exactly(len(payload)) == payload
    assert there.read_exactly(len(payload)) == payload
    here.send_line("after")  # the publishing part is still there
    assert there.read_line() == "text after\n"
    # A text that no node could deliver is dropped alone, not with its whole batch.
    here.send("undeliverable\nafter that\n")
    assert there.read_line() == "text after that\n"
    assert one.wait_for_log("event_not_published")["kind"] == "Direct"
    assert not one.events("backplane_part_failed")
    here.close()
    there.close()


def test_deeply_nested_garbage_on_the_channel_is_a_bad_event(
    start_server, redis_server: Redis
) -> None:
    """JSON nested deeper than Python's recursion limit: refused like any malformed message,
    without taking the subscriber down."""
    one = chat_node(start_server, redis_server)
    two = chat_node(start_server, redis_server)
    alice = chat_join(one.port, "alice")
    bob = chat_join(two.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    redis_call(redis_server, "PUBLISH", "gserver:events", "intruder\n" + "[" * 100_000)
    one.wait_for_log("bad_event")
    bob.send_line("still heard")
    assert alice.read_line() == "[bob]: still heard\n"
    assert not one.events("backplane_part_failed")
    alice.close()
    bob.close()


# A handler module that breaks one part of the backplane on demand, as a bug would: the
# subscriber on a message that says "crash-subscriber", the publisher on a broadcast that
# says "crash-publisher", the heartbeat that finds a file named "crash-heartbeat".  The
# pause before a restart is made long enough to look at /healthz and the metrics meanwhile.
FAULTY_HANDLER = """
import os
from gserver import backplane

backplane.RESTART_PAUSE = 3.0
_receive = backplane.Backplane._receive
_encode = backplane.encode_message
_refresh = backplane.Backplane._refresh_counts


def receive(self, raw):
    if b"crash-subscriber" in raw:
        raise RuntimeError("injected subscriber bug")
    return _receive(self, raw)


def encode(node, events):
    if any(b"crash-publisher" in getattr(e, "data", b"") for e in events):
        raise RuntimeError("injected publisher bug")
    return _encode(node, events)


def refresh(self):
    try:
        os.remove("crash-heartbeat")  # the node that removes it, and only that one, fails
    except FileNotFoundError:
        return _refresh(self)
    raise RuntimeError("injected heartbeat bug")


backplane.Backplane._receive = receive
backplane.encode_message = encode
backplane.Backplane._refresh_counts = refresh


def handle(conn):
    conn.send("ready\\n")
    for line in conn.lines():
        conn.registry.broadcast(line)
"""


def backplane_up_metric(metrics_port: int) -> float:
    status, body = http_get(metrics_port, "/metrics")
    assert status == 200
    found = re.search(r"^gserver_backplane_up (\S+)$", body, re.MULTILINE)
    assert found is not None, body
    return float(found[1])


@pytest.mark.parametrize("part", ["subscriber", "publisher", "heartbeat"])
def test_a_backplane_part_that_dies_is_logged_reported_and_restarted(
    start_server, redis_server: Redis, tmp_path: Path, part: str
) -> None:
    (tmp_path / "faulty.py").write_text(FAULTY_HANDLER)
    args = ("--handler", "faulty:handle", "--metrics-port", "0")
    one = node(start_server, redis_server, *args)
    two = node(start_server, redis_server, *args)
    here, there = Client(one.port), Client(two.port)
    for client in (here, there):
        assert client.read_line() == "ready\n"

    if part == "subscriber":
        there.send_line("crash-subscriber")  # published by two, fatal where one receives it
    elif part == "publisher":
        here.send_line("crash-publisher")
    else:
        (tmp_path / "crash-heartbeat").touch()  # both nodes run in tmp_path: one of them
    victim = one if part != "heartbeat" else None
    if victim is None:  # whichever heartbeat found the file first
        wait_until(
            lambda: one.events("backplane_part_failed") or two.events("backplane_part_failed"),
            WAIT,
            "a heartbeat failed",
        )
        victim = one if one.events("backplane_part_failed") else two
    failed = victim.wait_for_log("backplane_part_failed")
    assert failed["part"] == part
    assert failed["level"] == "error" and "injected" in failed.get("exception", "")
    metrics_port = victim.wait_for_log("metrics_listening")["port"]
    status, why = http_get(metrics_port, "/healthz")  # within the 3 s before the restart
    assert status == 503 and part in why
    assert backplane_up_metric(metrics_port) == 0
    victim.wait_for_log("backplane_part_restarted", part=part)
    assert http_get(metrics_port, "/healthz")[0] == 200
    assert backplane_up_metric(metrics_port) == 1
    # The restarted part does its work again: broadcasts cross both ways.
    here.send_line("from one")
    assert read_until_prefix(there, "[Broadcast] from one") == "[Broadcast] from one\n"
    there.send_line("from two")
    assert read_until_prefix(here, "[Broadcast] from two") == "[Broadcast] from two\n"
    here.close()
    there.close()


# -- 5. one backplane_down and one backplane_up per outage ---------------------------------------


def test_an_outage_is_logged_once_down_and_once_up_on_each_node(
    start_server, redis_server: Redis
) -> None:
    one = chat_node(start_server, redis_server, "--flood-rate", "0")
    two = chat_node(start_server, redis_server, "--flood-rate", "0")
    talkers = [chat_join(one.port, "ann"), chat_join(two.port, "bo")]
    listeners = [chat_join(one.port, "cy"), chat_join(two.port, "dee")]
    stop = threading.Event()

    def chat() -> None:
        # Lines published all along, /users and respellings asking Redis on the users'
        # greenlets too.  The listeners are left unread: their buffers hold all of this.
        n = 0
        while not stop.is_set():
            for talker, name in zip(talkers, ("ann", "bo"), strict=True):
                if n % 10 == 0:
                    talker.send_line("/users")
                elif n % 10 == 5:
                    talker.send_line(f"/nick {name.upper() if n % 20 == 5 else name}")
                else:
                    talker.send_line(f"line {n}")
            n += 1
            time.sleep(0.005)

    chatting = threading.Thread(target=chat, daemon=True)
    chatting.start()
    try:
        redis_server.kill()
        for server in (one, two):
            server.wait_for_log("backplane_down")
        redis_server.start()
        for server in (one, two):
            server.wait_for_events("backplane_up", 2, timeout=30)
        # Every part uses Redis again after the outage: the heartbeat refreshes its key, and
        # a line from each node reaches the other.
        for server in (one, two):
            wait_for_heartbeat(redis_server, node_id(server))
    finally:
        stop.set()
        chatting.join(WAIT)
    for talker, listener in ((talkers[0], listeners[1]), (talkers[1], listeners[0])):
        talker.send_line("after the outage")
        wait_for_line(listener, "]: after the outage\n")
    for server in (one, two):
        assert len(server.events("backplane_down")) == 1
        assert len(server.events("backplane_up")) == 2  # the start, and the end of the outage
    for client in (*talkers, *listeners):
        client.close()


def wait_for_heartbeat(redis_server: Redis, node: str) -> None:
    """Until the node's heartbeat key has been set again (its time to live goes up)."""
    key = f"gserver:node:{node}"
    last = [int(redis_call(redis_server, "PTTL", key))]

    def refreshed() -> bool:
        now = int(redis_call(redis_server, "PTTL", key))
        went_up = now > last[0] + 50
        last[0] = now
        return went_up

    wait_until(refreshed, WAIT, f"heartbeat of {node}", interval=0.1)


def wait_for_line(client: Client, ending: str) -> str:
    """The first line that ends with ``ending`` (the others are skipped)."""
    while not (line := client.read_line()).endswith(ending):
        pass
    return line
