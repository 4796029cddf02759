"""Rooms, topics, history, operators, kicks and bans across the Redis cluster (issue 11),
exactly as on one process: real gserver processes, real sockets and a real redis-server,
as in test_cluster.py.

To show that a line reached nobody else, a client reads on to a marker said after it on
the same node: one node's events reach another in the order they were sent.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest

from gserver.testing.probes import wait_until
from tests import test_rooms_wire
from tests.conftest import REDIS_SERVER, WAIT, Client, Redis, ServerProcess, chat_join
from tests.test_cluster import node
from tests.test_cluster_faults import redis_call

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)"
)

PASSWORD = test_rooms_wire.PASSWORD
password_hash = test_rooms_wire.password_hash  # the fixture: a hash from hash-password

HISTORY_LINE = re.compile(r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] (.*\n)")


def chat_node(start_server: Any, redis_server: Redis, *args: str) -> ServerProcess:
    return node(start_server, redis_server, "--mode", "chat", "--flood-rate", "0", *args)


class ClientFrom(Client):
    """A client that connects from another loopback address (127.0.0.2, ...), so that a
    ban of it leaves the test's other clients alone."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=WAIT, source_address=(source, 0)
        )
        self.buffer = b""


def join_from(port: int, name: str, source: str) -> Client:
    client = ClientFrom(port, source)
    client.read_until("Enter your username: ")
    client.send_line(name)
    assert client.read_line() == f"Welcome {name}!\n"
    return client


def arrive(clients: dict[str, Client], name: str, client: Client) -> Client:
    """``name`` has joined: everyone already in the default room hears of it."""
    for other in clients.values():
        assert other.read_line() == f"{name} joined the chat\n"
    clients[name] = client
    return client


def heard_nothing_before(client: Client, marker: str) -> None:
    """The next line ``client`` gets is ``marker``: nothing said before it reached them."""
    assert client.read_line() == marker


def history_of(client: Client, count: int) -> list[str]:
    """The next ``count`` lines, which must be history lines: the lines without their time."""
    lines = []
    for _ in range(count):
        line = client.read_line()
        matched = HISTORY_LINE.fullmatch(line)
        assert matched is not None, line
        lines.append(matched[1])
    return lines


def test_rooms_reach_exactly_their_members_on_every_node(start_server, redis_server: Redis) -> None:
    one = chat_node(start_server, redis_server)
    two = chat_node(start_server, redis_server)
    lobby: dict[str, Client] = {}
    alice = arrive(lobby, "alice", chat_join(one.port, "alice"))
    bob = arrive(lobby, "bob", chat_join(two.port, "bob"))
    carol = arrive(lobby, "carol", chat_join(one.port, "carol"))
    dave = arrive(lobby, "dave", chat_join(two.port, "dave"))

    bob.send_line("/join #Dev")
    assert bob.read_line() == "You joined #Dev\n"
    for other in (alice, carol, dave):
        assert other.read_line() == "bob went to #Dev\n"
    carol.send_line("/JOIN dev")  # the room as first written, on another node
    assert carol.read_line() == "You joined #Dev\n"
    assert bob.read_line() == "carol joined #Dev\n"
    for other in (alice, dave):
        assert other.read_line() == "carol went to #Dev\n"

    # Lines of a room reach its members on both nodes, and nobody in the lobby.
    bob.send_line("for dev only")
    for member in (bob, carol):
        assert member.read_line() == "[bob]: for dev only\n"
    carol.send_line("/me nods")
    for member in (bob, carol):
        assert member.read_line() == "* carol nods\n"
    dave.send_line("lobby marker")  # after bob's line on bob's node, after carol's on hers
    for member in (alice, dave):
        heard_nothing_before(member, "[dave]: lobby marker\n")
    alice.send_line("me too")
    heard_nothing_before(alice, "[alice]: me too\n")
    heard_nothing_before(dave, "[alice]: me too\n")

    # /users lists one's room across nodes, in arrival order; /rooms counts every node.
    for member in (bob, carol):
        member.send_line("/users")
        assert member.read_line() == "Online users: bob, carol\n"
    alice.send_line("/users")
    assert alice.read_line() == "Online users: alice, dave\n"
    dave.send_line("/rooms")
    assert dave.read_line() == "Rooms: #Dev (2), #lobby (2)\n"

    # A topic set on one node is the room's on the other, and told to the room alone.
    bob.send_line("/topic release on friday")
    for member in (bob, carol):
        assert member.read_line() == "bob set the topic: release on friday\n"
    carol.send_line("/topic")
    assert carol.read_line() == "Topic for #Dev: release on friday\n"
    alice.send_line("/topic")
    assert alice.read_line() == "No topic for #lobby\n"
    alice.send_line("/join #dev")
    assert alice.read_line() == "You joined #Dev\n"
    assert alice.read_line() == "Topic for #Dev: release on friday\n"
    for member in (bob, carol):
        assert member.read_line() == "alice joined #Dev\n"
    assert dave.read_line() == "alice went to #Dev\n"

    # Renames and leaves reach the room on every node, and nobody else.
    bob.send_line("/nick robert")
    assert bob.read_line() == "You are now known as robert\n"
    for member in (alice, carol):
        assert member.read_line() == "bob is now known as robert\n"
    alice.send_line("/users")
    assert alice.read_line() == "Online users: robert, carol, alice\n"
    bob.send_line("/quit")
    bob.read_to_close()
    for member in (alice, carol):
        assert member.read_line() == "robert left the chat\n"
    dave.send_line("/users")
    heard_nothing_before(dave, "Online users: dave\n")

    # The room ends when its last user on any node leaves it: its topic goes with it.
    carol.send_line("/join lobby")
    assert carol.read_line() == "You joined #lobby\n"
    assert alice.read_line() == "carol went to #lobby\n"
    assert dave.read_line() == "carol joined #lobby\n"
    dave.send_line("/join #dev")  # on the other node, while alice is still in it
    assert dave.read_line() == "You joined #Dev\n"
    assert dave.read_line() == "Topic for #Dev: release on friday\n"
    assert alice.read_line() == "dave joined #Dev\n"
    assert carol.read_line() == "dave went to #Dev\n"
    alice.send_line("/join #lobby")
    assert alice.read_line() == "You joined #lobby\n"
    assert dave.read_line() == "alice went to #lobby\n"
    assert carol.read_line() == "alice joined #lobby\n"
    dave.send_line("/join #lobby")  # the last one in #Dev, on the other node
    assert dave.read_line() == "You joined #lobby\n"
    for member in (alice, carol):
        assert member.read_line() == "dave joined #lobby\n"
    alice.send_line("/rooms")
    assert alice.read_line() == "Rooms: #lobby (3)\n"
    carol.send_line("/join #DEV")
    assert carol.read_line() == "You joined #DEV\n"  # a new room, as written now
    carol.send_line("/topic")
    assert carol.read_line() == "No topic for #DEV\n"
    for client in (alice, carol, dave):
        client.close()


def test_history_is_shared_and_outlives_both_gservers(start_server, redis_server: Redis) -> None:
    options = ("--history-lines", "5")
    one = chat_node(start_server, redis_server, *options)
    two = chat_node(start_server, redis_server, *options)
    lobby: dict[str, Client] = {}
    alice = arrive(lobby, "alice", chat_join(one.port, "alice"))
    bob = arrive(lobby, "bob", chat_join(two.port, "bob"))
    said = []
    for n in range(3):
        for speaker, name in ((alice, "alice"), (bob, "bob")):
            speaker.send_line(f"line {n}" if n else "/me waves")
            line = f"[{name}]: line {n}\n" if n else f"* {name} waves\n"
            for client in (alice, bob):  # each line stored before the next is said
                assert client.read_line() == line
            said.append(line)
    alice.send_line("/msg bob not kept")
    assert alice.read_line() == "[you -> bob]: not kept\n"
    assert bob.read_line() == "[alice -> you]: not kept\n"

    # A newcomer on either node gets the last five, oldest first, each in brackets with
    # the time it was said.
    with Client(two.port) as carol:
        carol.read_until("Enter your username: ")
        carol.send_line("carol")
        assert carol.read_line() == "Welcome carol!\n"
        assert history_of(carol, 5) == said[-5:]
        for client in (alice, bob):
            assert client.read_line() == "carol joined the chat\n"
        # and history in another room
        bob.send_line("/join #dev")
        assert bob.read_line() == "You joined #dev\n"
        assert carol.read_line() == "bob went to #dev\n"
        bob.send_line("in dev")
        assert bob.read_line() == "[bob]: in dev\n"
        wait_until(lambda: history_length(redis_server, "#dev") == 1, WAIT, "the line stored")
        carol.send_line("/join #dev")
        assert carol.read_line() == "You joined #dev\n"
        assert history_of(carol, 1) == ["[bob]: in dev\n"]
        assert bob.read_line() == "carol joined #dev\n"
    alice.close()
    bob.close()
    with Client(one.port) as early:
        early.read_until("Enter your username: ")
        early.send_line("early")
        assert early.read_line() == "Welcome early!\n"
        first_seen = [early.read_line() for _ in range(5)]

    # Both gservers go; Redis stays.  The lobby's history is still there; #dev ended with
    # its last user.
    one.stop()
    two.stop()
    three = chat_node(start_server, redis_server, *options)
    four = chat_node(start_server, redis_server, *options)
    dave = chat_join(three.port, "dave")
    assert [dave.read_line() for _ in range(5)] == first_seen  # the same lines and times
    erin = chat_join(four.port, "erin")
    assert history_of(erin, 5) == said[-5:]
    assert dave.read_line() == "erin joined the chat\n"
    dave.send_line("/join #dev")
    assert dave.read_line() == "You joined #dev\n"
    erin.send_line("after the restart")
    assert read_until(erin, "[erin]") == "[erin]: after the restart\n"
    wait_until(lambda: history_length(redis_server, "#lobby") == 5, WAIT, "lobby history")
    wait_until(
        lambda: redis_call(redis_server, "LINDEX", "gserver:room:#lobby:history", "0").endswith(
            "[erin]: after the restart\n"
        ),
        WAIT,
        "the line stored",
    )
    dave.send_line("/join #lobby")
    assert dave.read_line() == "You joined #lobby\n"  # and no history of #dev came before
    assert history_of(dave, 5) == [*said[-4:], "[erin]: after the restart\n"]
    dave.close()
    erin.close()


def history_length(redis_server: Redis, room: str) -> int:
    return int(redis_call(redis_server, "LLEN", f"gserver:room:{room}:history"))


def greeting(port: int, source: str) -> str:
    """What a new client from ``source`` is told first: a prompt, or a line."""
    with ClientFrom(port, source) as client:
        while b"\n" not in client.buffer and b": " not in client.buffer:
            if not client._fill():
                break
        return client.buffer.decode()


def test_a_kick_and_a_ban_on_one_node_reach_users_on_others(
    start_server, redis_server: Redis, password_hash: str
) -> None:
    options = ("--oper-password", password_hash)
    one = chat_node(start_server, redis_server, *options)
    two = chat_node(start_server, redis_server, *options)
    three = chat_node(start_server, redis_server, *options)
    lobby: dict[str, Client] = {}
    op = arrive(lobby, "op", chat_join(one.port, "op"))
    witness = arrive(lobby, "witness", chat_join(two.port, "witness"))
    eve = arrive(lobby, "eve", chat_join(two.port, "eve"))
    mallory = arrive(lobby, "mallory", join_from(two.port, "mallory", "127.0.0.2"))

    op.send_line(f"/oper {PASSWORD}")
    assert op.read_line() == "You are now an operator\n"
    witness.send_line("/users")  # operators are marked on every node
    assert witness.read_line() == "Online users: @op, witness, eve, mallory\n"
    op.send_line("/kick nobody")
    assert op.read_line() == "No such user: nobody\n"

    op.send_line("/kick EVE being rude")  # eve is on another node
    assert eve.read_line() == "You were kicked by op: being rude\n"
    assert eve.read_to_close() == ""
    for client in (op, witness, mallory):
        assert client.read_line() == "eve was kicked by op: being rude\n"

    op.send_line("/ban mallory 10 flooding")
    assert mallory.read_line() == "You were banned by op: flooding\n"
    assert mallory.read_to_close() == ""
    for client in (op, witness):
        assert client.read_line() == "mallory was banned by op: flooding\n"
    # Refused on every node, before any prompt: on the third, where neither the operator
    # nor mallory were, as soon as the ban has reached it.
    for server in (three, one, two):
        wait_until(
            lambda port=server.port: greeting(port, "127.0.0.2") == "You are banned\n",
            WAIT,
            "the ban refuses 127.0.0.2",
        )
    ends = int(redis_call(redis_server, "HGET", "gserver:bans", "127.0.0.2"))
    with Client(three.port) as other:  # other addresses are welcome
        assert other.read_until(": ") == "Enter your username: "
    op.send_line("/bans")
    assert op.read_line() == "127.0.0.2 (10 minutes left)\n"

    # Lifted on one node, lifted on all.
    op.send_line("/unban 127.0.0.2")
    assert op.read_line() == "Unbanned 127.0.0.2\n"

    wait_until(
        lambda: greeting(three.port, "127.0.0.2") == "Enter your username: ",
        WAIT,
        "the ban is lifted on the third node",
    )
    assert ends > 0 and redis_call(redis_server, "HGET", "gserver:bans", "127.0.0.2") is None
    op.close()
    witness.close()


def test_a_ban_outlives_both_gservers(
    start_server, redis_server: Redis, password_hash: str
) -> None:
    options = ("--oper-password", password_hash)
    one = chat_node(start_server, redis_server, *options)
    two = chat_node(start_server, redis_server, *options)
    op = chat_join(one.port, "op")
    mallory = join_from(two.port, "mallory", "127.0.0.2")
    assert op.read_line() == "mallory joined the chat\n"
    op.send_line(f"/oper {PASSWORD}")
    assert op.read_line() == "You are now an operator\n"
    op.send_line("/ban mallory 5")
    assert mallory.read_line() == "You were banned by op\n"
    assert op.read_line() == "mallory was banned by op\n"
    op.close()
    one.stop()
    two.stop()

    for server in (chat_node(start_server, redis_server), chat_node(start_server, redis_server)):
        with ClientFrom(server.port, "127.0.0.2") as again:
            assert again.read_to_close() == "You are banned\n"
        with Client(server.port) as other:
            assert other.read_until(": ") == "Enter your username: "


def test_max_rooms_counts_the_rooms_of_every_node(start_server, redis_server: Redis) -> None:
    one = chat_node(start_server, redis_server, "--max-rooms", "3")
    two = chat_node(start_server, redis_server, "--max-rooms", "3")
    alice = chat_join(one.port, "alice")
    bob = chat_join(two.port, "bob")
    carol = chat_join(one.port, "carol")
    for who, room in ((alice, "#a"), (bob, "#b")):
        who.send_line(f"/join {room}")
        assert read_reply(who) == f"You joined {room}\n"
    carol.send_line("/join #c")  # #lobby, #a and #b: three rooms already
    assert read_reply(carol) == "Too many rooms\n"
    carol.send_line("/join #B")  # a room that is there is no new room
    assert read_reply(carol) == "You joined #b\n"
    bob.send_line("/join #lobby")
    assert read_reply(bob) == "You joined #lobby\n"
    carol.send_line("/join #lobby")  # #b ends with its last user
    assert read_reply(carol) == "You joined #lobby\n"
    carol.send_line("/join #c")
    assert read_reply(carol) == "You joined #c\n"
    for client in (alice, bob, carol):
        client.close()


def test_a_room_ends_with_its_last_user_on_a_node_that_died(
    start_server, redis_server: Redis
) -> None:
    one = chat_node(start_server, redis_server, "--history-lines", "3")
    two = chat_node(start_server, redis_server, "--history-lines", "3")
    alice = chat_join(one.port, "alice")
    carol = chat_join(two.port, "carol")
    assert alice.read_line() == "carol joined the chat\n"
    carol.send_line("/join #dev")
    assert carol.read_line() == "You joined #dev\n"
    assert alice.read_line() == "carol went to #dev\n"
    carol.send_line("/topic secret plans")
    assert carol.read_line() == "carol set the topic: secret plans\n"
    carol.send_line("said in dev")
    assert carol.read_line() == "[carol]: said in dev\n"
    wait_until(lambda: history_length(redis_server, "#dev") == 1, WAIT, "the line stored")
    two.proc.kill()  # no goodbye: only the heartbeat's expiry tells
    two.wait()
    carol.close()

    def dev_gone() -> bool:
        alice.send_line("/rooms")
        return alice.read_line() == "Rooms: #lobby (1)\n"

    wait_until(dev_gone, WAIT, "the dead node's room is not listed", interval=0.5)
    alice.send_line("/join #dev")
    assert alice.read_line() == "You joined #dev\n"  # no topic, no history
    alice.send_line("/topic")
    assert alice.read_line() == "No topic for #dev\n"
    assert history_length(redis_server, "#dev") == 0
    alice.close()


_REPLIES = ("You ", "Too many", "Online users", "Rooms: ")


def read_reply(client: Client) -> str:
    """The next reply to the client's own command, past others' notices."""
    while not (line := client.read_line()).startswith(_REPLIES):
        pass
    return line


def test_redis_that_lost_everything_gets_rooms_and_bans_back_from_the_nodes(
    start_server, redis_server: Redis, password_hash: str
) -> None:
    """While Redis is away each node serves its own members alone; when it is back (empty:
    this one saves nothing), the nodes put their members' seats, rooms and bans back, and
    a ban set meanwhile holds on every node."""
    options = ("--oper-password", password_hash)
    one = chat_node(start_server, redis_server, *options)
    two = chat_node(start_server, redis_server, *options)
    op = chat_join(one.port, "op")
    bob = chat_join(two.port, "bob")
    mallory = join_from(two.port, "mallory", "127.0.0.2")
    trudy = join_from(one.port, "trudy", "127.0.0.3")
    op.send_line(f"/oper {PASSWORD}")
    op.send_line("/ban mallory")
    assert read_until(op, "mallory was banned") == "mallory was banned by op\n"
    op.send_line("/join #dev")
    assert read_until(op, "You joined") == "You joined #dev\n"
    bob.send_line("/join #dev")
    assert read_until(bob, "You joined") == "You joined #dev\n"
    assert read_until(op, "bob joined") == "bob joined #dev\n"
    mallory.close()

    redis_server.kill()
    one.wait_for_log("backplane_down")
    two.wait_for_log("backplane_down")
    op.send_line("/users")  # what this node knows, at once
    assert read_reply(op) == "Online users: @op\n"
    bob.send_line("/join #ops")  # a room made while Redis is away
    assert read_reply(bob) == "You joined #ops\n"
    op.send_line("/ban trudy")  # on this node alone, for now
    assert read_until(trudy, "You were") == "You were banned by op\n"
    trudy.close()

    redis_server.start()
    for server in (one, two):
        server.wait_for_events("backplane_up", 2, timeout=30)
    op.send_line("/rooms")
    assert read_reply(op) == "Rooms: #dev (1), #lobby (0), #ops (1)\n"
    bob.send_line("/join #dev")
    assert read_reply(bob) == "You joined #dev\n"
    op.send_line("/users")
    assert read_reply(op) == "Online users: @op, bob\n"
    three = chat_node(start_server, redis_server)  # knows the bans from Redis alone
    for server in (two, three):
        for address in ("127.0.0.2", "127.0.0.3"):
            assert greeting(server.port, address) == "You are banned\n"
    op.close()
    bob.close()


def read_until(client: Client, prefix: str) -> str:
    while not (line := client.read_line()).startswith(prefix):
        pass
    return line
