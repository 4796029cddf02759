"""The chat state machine and room, with members in memory: no sockets."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gserver.protocol.chat import (
    HELP,
    PROMPT,
    ChatSession,
    State,
    name_is_valid,
    name_key,
    users_reply,
)
from gserver.protocol.framing import LineFramer
from gserver.protocol.text import decode
from gserver.registry import ChatRoom


class FakeMember:
    def __init__(self) -> None:
        self.received: list[str] = []
        self.closed_because: str | None = None

    def send(self, data: str | bytes) -> None:
        self.received.append(data.decode() if isinstance(data, bytes) else data)

    def close(self, reason: str) -> None:
        self.closed_because = reason

    def take(self) -> str:
        text = "".join(self.received)
        self.received.clear()
        return text


def joined(room: ChatRoom, name: str) -> tuple[ChatSession, FakeMember]:
    member = FakeMember()
    session = ChatSession(room, member)
    session.start()
    session.receive(name)
    assert member.take() == f"{PROMPT}Welcome {name}!\n"
    return session, member


def test_a_new_client_is_asked_for_a_name() -> None:
    member = FakeMember()
    ChatSession(ChatRoom(), member).start()
    assert member.take() == "Enter your username: "


def test_joining_welcomes_the_client_and_tells_everyone_else() -> None:
    room = ChatRoom()
    _, alice = joined(room, "alice")
    _, _bob = joined(room, "bob")
    assert alice.take() == "bob joined the chat\n"


def test_a_message_goes_to_everyone_including_the_sender() -> None:
    room = ChatRoom()
    alice_session, alice = joined(room, "alice")
    _, bob = joined(room, "bob")
    alice.take()
    alice_session.receive("  hello  ")
    assert alice.take() == "[alice]: hello\n"
    assert bob.take() == "[alice]: hello\n"


def test_users_lists_names_in_join_order() -> None:
    room = ChatRoom()
    _, _ = joined(room, "zed")
    session, member = joined(room, "amy")
    session.receive("/users")
    assert member.take() == "Online users: zed, amy\n"


def test_help_starts_with_the_seeds_four_lines() -> None:
    session, member = joined(ChatRoom(), "alice")
    session.receive("/help")
    assert member.take() == HELP
    assert HELP.startswith(
        "Commands:\n/users - View user list\n/help - Show help\n/quit - Exit chat\n"
    )


def test_unknown_commands_are_answered() -> None:
    session, member = joined(ChatRoom(), "alice")
    session.receive("/dance")
    assert member.take() == "Unknown command. Type /help for help\n"


def test_quit_closes_and_tells_the_others_once() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    _, bob = joined(room, "bob")
    session.receive("/quit")
    assert alice.closed_because == "quit"
    session.end()
    assert bob.take() == "alice left the chat\n"
    assert room.names() == ["bob"]


def test_quit_at_the_name_prompt_just_closes() -> None:
    room = ChatRoom()
    _, bob = joined(room, "bob")
    member = FakeMember()
    session = ChatSession(room, member)
    session.start()
    session.receive("/quit")
    session.end()
    assert member.closed_because == "quit"
    assert bob.take() == ""


def test_leaving_without_announcement_during_shutdown() -> None:
    room = ChatRoom()
    session, _ = joined(room, "alice")
    _, bob = joined(room, "bob")
    session.end(announce=False)
    assert bob.take() == ""
    assert room.names() == ["bob"]


def test_names_are_unique_without_regard_to_case_or_compatibility_form() -> None:
    room = ChatRoom()
    joined(room, "Alice")
    member = FakeMember()
    session = ChatSession(room, member)
    session.start()
    member.take()
    session.receive("aLICE")
    assert member.take() == "Username aLICE is taken, choose another: "
    session.receive("\uff21lice")  # fullwidth A: the same name under NFKC
    assert member.take() == "Username \uff21lice is taken, choose another: "
    assert session.state is State.AWAITING_NAME
    session.receive("carol")
    assert member.take() == "Welcome carol!\n"


def test_invalid_names_are_refused() -> None:
    member = FakeMember()
    session = ChatSession(ChatRoom(), member)
    session.start()
    member.take()
    for bad in ("two words", "/slash", "x" * 33, "bell\x07"):
        session.receive(bad)
        assert member.take() == (
            "Invalid username (1-32 printable characters, no spaces), try again: "
        )
    session.receive("x" * 32)
    assert member.take() == f"Welcome {'x' * 32}!\n"


def test_telnet_cr_nul_line_ends_are_tolerated() -> None:
    member = FakeMember()
    session = ChatSession(ChatRoom(), member)
    session.start()
    member.take()
    session.receive("tina\r\x00")
    assert member.take() == "Welcome tina!\n"


def test_empty_lines_are_ignored_in_chat() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    session.receive("   ")
    assert alice.take() == ""


def test_msg_reaches_one_user_only() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    _, bob = joined(room, "bob")
    _, carol = joined(room, "carol")
    alice.take()
    bob.take()
    session.receive("/msg BOB psst, hi")
    assert bob.take() == "[alice -> you]: psst, hi\n"
    assert alice.take() == "[you -> bob]: psst, hi\n"
    assert carol.take() == ""
    session.receive("/msg nobody hi")
    assert alice.take() == "No such user: nobody\n"


def test_me_tells_everyone_an_action() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    _, bob = joined(room, "bob")
    alice.take()
    session.receive("/me waves")
    assert alice.take() == bob.take() == "* alice waves\n"


def test_nick_renames_and_tells_everyone_else() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    _, bob = joined(room, "bob")
    alice.take()
    session.receive("/nick bob")
    assert alice.take() == "Username bob is taken\n"
    session.receive("/nick alicia")
    assert alice.take() == "You are now known as alicia\n"
    assert bob.take() == "alice is now known as alicia\n"
    assert room.names() == ["bob", "alicia"]
    session.receive("hi")
    assert bob.take() == "[alicia]: hi\n"


def test_messages_are_sanitised_before_relay() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    session.receive("\x1b[2Jgotcha\u202e")
    assert alice.take() == "[alice]: gotcha\n"


def test_name_key_folds_case_and_compatibility_forms() -> None:
    assert name_key("\uff21\uff2c\uff29\uff23\uff25") == name_key("alice")
    assert name_key("Straße") == name_key("STRASSE")


def transcript(chunks: list[bytes]) -> list[tuple[str, ...]]:
    """Feed one client's bytes through framer and session; what everyone received."""
    room = ChatRoom()
    _, watcher = joined(room, "watcher")
    member = FakeMember()
    session = ChatSession(room, member)
    session.start()
    framer = LineFramer(64)
    for chunk in chunks:
        for frame in framer.feed(chunk):
            if isinstance(frame, bytes):
                session.receive(decode(frame))
    session.end()
    return [tuple(member.received), tuple(watcher.received)]


@settings(max_examples=200)
@given(
    data=st.lists(
        st.one_of(
            st.binary(max_size=10),
            st.sampled_from([b"\n", b"/users\n", b"/nick x\n", b"/msg watcher hi\n", b"/me a\n"]),
            st.sampled_from([b"\xff", b"\xc3", b"\x1b[", b"/quit\n", b"ann\n", b"\r\n"]),
        ),
        max_size=30,
    ).map(b"".join),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_chat_gives_the_same_result_however_the_bytes_are_split(
    data: bytes, cuts: list[int]
) -> None:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    pieces = [data[a:b] for a, b in itertools.pairwise(edges)]
    assert transcript(pieces) == transcript([data])


# -- invisible and lookalike characters ------------------------------------------------------

INVALID_NAME_PROMPT = "Invalid username (1-32 printable characters, no spaces), try again: "
# Each drawn beside "watcher" looks like "watcher" alone on a terminal.
LOOKALIKES = {
    "combining grapheme joiner": "\u034f",
    "VS16": "\ufe0f",
    "Hangul filler": "\u3164",
    "braille blank": "\u2800",
}


def prompted(room: ChatRoom) -> tuple[ChatSession, FakeMember]:
    member = FakeMember()
    session = ChatSession(room, member)
    session.start()
    assert member.take() == PROMPT
    return session, member


def test_lookalikes_of_a_taken_name_are_refused() -> None:
    room = ChatRoom()
    joined(room, "watcher")
    session, member = prompted(room)
    for suffix in LOOKALIKES.values():
        session.receive(f"watcher{suffix}")
        assert member.take() == INVALID_NAME_PROMPT
        assert name_key(f"watcher{suffix}") != name_key("watcher")  # not even a /msg target
    assert room.names() == ["watcher"]
    session.receive("\uff37atcher")  # fullwidth W: the same name
    assert member.take() == "Username \uff37atcher is taken, choose another: "
    session.receive("\uff23arol")  # a name is shown as typed; only its key is mapped
    assert member.take() == "Welcome \uff23arol!\n"
    session.receive("/users")
    assert member.take() == "Online users: watcher, \uff23arol\n"
    for suffix in LOOKALIKES.values():
        session.receive(f"/nick watcher{suffix}")
        assert member.take() == "Invalid username (1-32 printable characters, no spaces)\n"


def test_names_have_no_invisible_or_blank_characters() -> None:
    for name in (
        *(f"watcher{suffix}" for suffix in LOOKALIKES.values()),
        "\u3164",  # nothing visible at all
        "\u2800\u2800",
        "wat\u00adcher",  # soft hyphen
        "wat\u200bcher",
        "wat\u2060cher",
        "watcher\U000e0041",  # a tag character
        "watcher\u115f",
        "watcher\uffa0",
        "watcher\U00016fe4",  # Khitan filler: a combining mark the profile allows
        "\u0915\u094d\u200d\u0937",  # a ZWJ the profile allows after a virama
        "\u0301watcher",  # a mark with nothing under it
        "\u2003watcher",  # em space
    ):
        assert not name_is_valid(name), ascii(name)


def test_names_follow_the_username_case_mapped_profile() -> None:
    # Compatibility forms but width, and symbols beyond ASCII, are not allowed (RFC 8265).
    for name in ("\u210cello", "\U0001f98afox", "x\u00b7y"):
        assert not name_is_valid(name), ascii(name)
    for name in (
        "Zo\u00eb-\u00c5ngstr\u00f6m",
        "\u0414\u043c\u0438\u0442\u0440\u0438\u0439",
        "\u5c71\u7530",
        "\uff21lice",
    ):
        assert name_is_valid(name), ascii(name)
    assert name_key("\u03a3\u0391\u03a3") == name_key("\u03c3\u03b1\u03c2")  # final sigma too
    assert name_key("A\u030angstr\u00f6m") == name_key("\u00c5ngstr\u00f6m")  # NFC


def test_invisible_characters_never_reach_others() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    _, bob = joined(room, "bob")
    alice.take()
    hidden = "".join(chr(0xE0000 + ord(c)) for c in " run rm -rf /")
    session.receive(f"hello{hidden}")
    assert bob.take() == "[alice]: hello\n"
    session.receive(f"/me waves{hidden}\u2060")
    assert bob.take() == "* alice waves\n"
    session.receive(f"/msg bob psst\u00ad{hidden}")
    assert bob.take() == "[alice -> you]: psst\n"
    assert alice.take() == "[alice]: hello\n* alice waves\n[you -> bob]: psst\n"
    session.receive("\u2060\u2061\u180e\ufff9")  # nothing but invisible: nothing to say
    session.receive("\u200b hi \u2063")
    assert bob.take() == "[alice]: hi\n"


def test_emoji_sequences_reach_others_whole() -> None:
    room = ChatRoom()
    session, alice = joined(room, "alice")
    _, bob = joined(room, "bob")
    alice.take()
    emoji = (
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f "
        "\U0001f3f3\ufe0f\u200d\U0001f308 1\ufe0f\u20e3 \U0001f44d\U0001f3fd \U0001f1eb\U0001f1f7"
    )
    session.receive(emoji)
    assert bob.take() == f"[alice]: {emoji}\n"
    session.receive("/me \U0001f469\U0001f3fd\u200d\U0001f4bb")
    assert bob.take() == "* alice \U0001f469\U0001f3fd\u200d\U0001f4bb\n"


def test_a_users_reply_is_bounded_and_says_how_many_more() -> None:
    names = [f"user{i:04d}" for i in range(1000)]
    reply = users_reply(names, 1000)
    assert len(reply.encode()) <= 1000
    assert reply.startswith("Online users: user0000, user0001, ")
    shown = reply.removeprefix("Online users: ").split(", ")[:-1]
    assert names[: len(shown)] == shown
    assert reply.endswith(f", (and {1000 - len(shown)} more)\n")
    assert users_reply(["alice", "bob"], 1000) == "Online users: alice, bob\n"
