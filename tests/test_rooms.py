"""Rooms, topics, history and operators in the chat state machine, in memory: no sockets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gserver.protocol.chat import HELP, ChatSession, State
from gserver.protocol.passwords import PasswordHashError, hash_password, parse, verify
from gserver.registry import ChatRoom

SECRET = "correct horse"
SECRET_HASH = hash_password(SECRET)


class Member:
    """A client in memory: what it was sent, and whether it was closed."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.closed: str | None = None

    def send(self, data: str | bytes) -> None:
        self.received.append(data if isinstance(data, str) else data.decode())

    def close(self, reason: str) -> None:
        self.closed = reason

    def take(self) -> list[str]:
        """Everything received since the last take, line by line."""
        text = "".join(self.received)
        self.received.clear()
        return text.splitlines(keepends=True)


class World:
    """One chat with sessions made on demand."""

    def __init__(self, **options: object) -> None:
        self.chat = ChatRoom(**options)  # type: ignore[arg-type]
        self.addresses = itertools.count(1)

    def session(self, name: str | None, address: str | None = None) -> tuple[ChatSession, Member]:
        member = Member()
        ip = address or f"192.0.2.{next(self.addresses)}"
        session = ChatSession(
            self.chat, member, address=ip, check_password=lambda p: verify(p, SECRET_HASH)
        )
        session.start()
        if name is not None:
            session.receive(name)
            assert f"Welcome {name}!\n" in "".join(member.received)
        member.received.clear()
        return session, member


def test_everyone_starts_in_the_default_room() -> None:
    world = World(default_room="lobby")
    _alice, a = world.session("alice")
    bob, b = world.session("bob")
    assert a.take() == ["bob joined the chat\n"]
    bob.receive("/users")
    assert b.take() == ["Online users: alice, bob\n"]
    bob.receive("/rooms")
    assert b.take() == ["Rooms: #lobby (2)\n"]


def test_join_moves_you_and_tells_both_rooms() -> None:
    world = World()
    _alice, a = world.session("alice")
    bob, b = world.session("bob")
    carol, c = world.session("carol")
    a.take(), b.take()
    carol.receive("/join dev")
    assert c.take() == ["You joined #dev\n"]
    assert a.take() == ["carol went to #dev\n"]
    assert b.take() == ["carol went to #dev\n"]
    bob.receive("/JOIN #DEV")  # commands without regard to case; rooms too
    assert b.take() == ["You joined #dev\n"]  # as first written
    assert c.take() == ["bob joined #dev\n"]
    assert a.take() == ["bob went to #dev\n"]
    bob.receive("/join #dev")
    assert b.take() == ["You are already in #dev\n"]
    for bad in ("#no!", "dev\u200b", "#\u202edev", "#" + "x" * 33, "#", "#a b"):
        bob.receive(f"/join {bad}")
        assert b.take() in (
            ["Invalid room name (# and 1-32 letters, digits, - _ .)\n"],
            ["Usage: /join #ROOM\n"],  # a space makes two arguments
        ), bad
    bob.receive("/join")
    assert b.take() == ["Usage: /join #ROOM\n"]


def test_lines_and_actions_stay_in_their_room_but_msg_reaches_anyone() -> None:
    world = World()
    alice, a = world.session("alice")
    bob, b = world.session("bob")
    a.take()
    bob.receive("/join dev")
    a.take(), b.take()
    bob.receive("hello dev")
    bob.receive("/me waves")
    assert b.take() == ["[bob]: hello dev\n", "* bob waves\n"]
    assert a.take() == []
    alice.receive("/msg bob psst")
    assert b.take() == ["[alice -> you]: psst\n"]
    assert a.take() == ["[you -> bob]: psst\n"]
    bob.receive("/nick robert")
    assert a.take() == []  # a rename is told to the room only
    bob.end()
    assert a.take() == []  # and so is a leave


def test_users_lists_your_room_in_arrival_order_with_operators_marked() -> None:
    world = World()
    alice, _a = world.session("alice")
    _bob, _b = world.session("bob")
    carol, c = world.session("carol")
    carol.receive("/join dev")
    alice.receive("/join dev")
    alice.receive(f"/oper {SECRET}")
    carol.receive("/users")
    assert c.take()[-1] == "Online users: carol, @alice\n"


def test_rooms_are_sorted_without_regard_to_case_and_end_when_empty() -> None:
    world = World()
    alice, _a = world.session("alice")
    bob, b = world.session("bob")
    alice.receive("/join Zeta")
    bob.receive("/join alpha")
    bob.receive("/topic first topic")
    bob.receive("/rooms")
    assert b.take()[-1] == "Rooms: #alpha (1), #lobby (0), #Zeta (1)\n"
    bob.receive("/join lobby")
    bob.receive("/join ALPHA")
    b.take()
    bob.receive("/topic")
    assert b.take() == ["No topic for #ALPHA\n"]  # a new room, first written anew


def test_topics_are_sanitised_bounded_and_told_to_the_room() -> None:
    world = World()
    alice, a = world.session("alice")
    bob, b = world.session("bob")
    a.take()
    alice.receive("/topic \x1b[31mred\u2060 news")
    assert a.take() == ["alice set the topic: red news\n"]
    assert b.take() == ["alice set the topic: red news\n"]
    bob.receive("/topic")
    assert b.take() == ["Topic for #lobby: red news\n"]
    alice.receive("/topic " + "x" * 300)
    assert a.take() == [f"alice set the topic: {'x' * 200}\n"]
    carol, c = world.session(None)
    carol.receive("carol")
    carol.receive("/join #lobby")
    assert c.take()[-1] == "You are already in #lobby\n"
    dave, d = world.session("dave")
    dave.receive("/join dev")
    dave.receive("/join lobby")
    assert d.take() == [
        "You joined #dev\n",
        "You joined #lobby\n",
        f"Topic for #lobby: {'x' * 200}\n",
    ]


def test_too_many_rooms() -> None:
    world = World(max_rooms=2)
    alice, _a = world.session("alice")
    bob, b = world.session("bob")
    alice.receive("/join one")
    bob.receive("/join two")
    assert b.take()[-1] == "Too many rooms\n"


def test_history_is_off_by_default_and_replayed_oldest_first_when_on() -> None:
    quiet = World()
    alice, _ = quiet.session("alice")
    alice.receive("hi")
    late, l_ = quiet.session(None)
    late.receive("bob")
    assert l_.take() == ["Welcome bob!\n"]

    world = World(history_lines=2)
    alice, _a = world.session("alice")
    alice.receive("one")
    alice.receive("/me two")
    alice.receive("/topic not history")
    alice.receive("three")
    bob, b = world.session(None)
    bob.receive("bob")
    lines = b.take()
    assert lines[0] == "Welcome bob!\n"
    assert [line.split("] ", 1)[1] for line in lines[1:]] == ["* alice two\n", "[alice]: three\n"]
    assert all(line.startswith("[20") and "Z] " in line for line in lines[1:])
    alice.receive("/join dev")
    alice.receive("in dev")
    assert b.take() == ["alice went to #dev\n"]
    bob.receive("/join dev")
    lines = b.take()
    assert lines[0] == "You joined #dev\n"
    assert lines[1].endswith("] [alice]: in dev\n")


def test_operators_kick_and_ban_and_others_are_denied() -> None:
    world = World()
    op, o = world.session("op")
    alice, a = world.session("alice", address="198.51.100.7")
    bob, b = world.session("bob")
    o.take(), a.take()
    bob.receive("/kick alice")
    assert b.take() == ["Permission denied\n"]
    op.receive("/oper wrong")
    assert o.take() == ["Wrong password\n"]
    op.receive(f"/oper {SECRET}")
    assert o.take() == ["You are now an operator\n"]
    op.receive("/kick")
    assert o.take() == ["Usage: /kick NAME [REASON]\n"]
    op.receive("/kick nobody")
    assert o.take() == ["No such user: nobody\n"]
    op.receive("/ban alice 5 spamming links")
    assert a.take() == ["You were banned by op: spamming links\n"]
    assert a.closed
    assert b.take() == ["alice was banned by op: spamming links\n"]
    assert o.take() == ["alice was banned by op: spamming links\n"]
    alice.end()  # the kicked client's own end announces nothing more
    assert b.take() == []
    op.receive("/bans")
    assert o.take() == ["198.51.100.7 (5 minutes left)\n"]
    op.receive("/unban 198.51.100.7")
    assert o.take() == ["Unbanned 198.51.100.7\n"]
    op.receive("/bans")
    assert o.take() == ["No bans\n"]
    op.receive("/kick bob")
    assert b.take() == ["You were kicked by op\n"]


def test_a_banned_address_is_refused_before_any_prompt() -> None:
    world = World()
    op, o = world.session("op")
    op.receive(f"/oper {SECRET}")
    _alice, _a = world.session("alice", address="203.0.113.5")
    op.receive("/ban alice")
    member = Member()
    session = ChatSession(world.chat, member, address="203.0.113.5")
    session.start()
    assert member.received == ["You are banned\n"]
    assert member.closed == "banned"
    assert session.state is State.CLOSED
    op.receive("/bans")
    assert o.take()[-1] == "203.0.113.5 (60 minutes left)\n"


def test_three_wrong_passwords_close_the_connection() -> None:
    world = World()
    alice, a = world.session("alice")
    for _ in range(3):
        alice.receive("/oper guess")
    assert a.take() == ["Wrong password\n"] * 3
    assert a.closed
    assert alice.state is State.CLOSED


def test_without_a_password_setting_nobody_becomes_an_operator() -> None:
    chat = ChatRoom()
    member = Member()
    session = ChatSession(chat, member, address="192.0.2.1")
    session.start()
    session.receive("alice")
    session.receive("/oper anything")
    assert member.received[-1] == "Wrong password\n"


def test_help_keeps_the_seeds_four_lines_first_and_lists_every_command() -> None:
    seed = "Commands:\n/users - View user list\n/help - Show help\n/quit - Exit chat\n"
    assert HELP.startswith(seed)
    for command in ("/join", "/rooms", "/topic", "/oper", "/kick", "/ban", "/unban", "/bans"):
        assert f"\n{command} " in HELP


def test_password_hashes() -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("scrypt$") and "s3cret" not in hashed
    assert verify("s3cret", hashed)
    assert not verify("s3cret ", hashed)
    assert hash_password("s3cret") != hashed  # salted
    for bad in ("", "plain", "scrypt$1$8$1$AA==$AA==", "scrypt$16384$8$1$!!$AA=="):
        with pytest.raises(PasswordHashError):
            parse(bad)


ACTIONS = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.sampled_from(["say", "join", "leave", "nick", "me", "quit"]),
        st.sampled_from(["#a", "#b", "#lobby", "#A"]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ACTIONS)
def test_everyone_is_in_one_room_and_lines_reach_exactly_their_room(actions: list) -> None:
    world = World()
    sessions: list[tuple[ChatSession, Member] | None] = [None] * 5
    for index, verb, room in actions:
        entry = sessions[index]
        if entry is None:
            sessions[index] = world.session(f"user{index}")
            continue
        session, member = entry
        if verb == "say" or verb == "me":
            here = world.chat.room_of(member)
            audience = {id(m) for s, m in filter(None, sessions) if world.chat.room_of(m) == here}
            for _, m in filter(None, sessions):
                m.received.clear()
            session.receive("hello" if verb == "say" else "/me waves")
            got = {id(m) for _, m in filter(None, sessions) if m.received}
            assert got == audience
        elif verb == "join":
            session.receive(f"/join {room}")
        elif verb == "nick":
            session.receive(f"/nick {session.name}x")
        elif verb in ("leave", "quit"):
            session.end()
            sessions[index] = None
        rooms = [world.chat.room_of(m) for _, m in filter(None, sessions)]
        assert all(room.startswith("#") for room in rooms)
        listed = dict(world.chat.listing())
        for room in set(rooms):
            assert listed[room] == rooms.count(room)
