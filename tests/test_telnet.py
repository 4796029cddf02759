"""Telnet commands in the line modes: taken out, answered, and Ctrl-C as a quit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gserver.protocol.telnet import BRK, DO, DONT, IAC, IP, SB, SE, WILL, WONT, TelnetFilter
from tests.conftest import Client, chat_join

ECHO, NAWS, TIMING_MARK = 1, 31, 6


def feed_all(chunks: list[bytes]) -> tuple[bytes, bytes, bool]:
    telnet = TelnetFilter()
    data, reply = b"", b""
    for chunk in chunks:
        result = telnet.feed(chunk)
        data += result.data
        reply += result.reply
        if result.interrupted:
            return data, reply, True
    return data, reply, False


def test_commands_are_taken_out_and_options_answered() -> None:
    stream = bytes([IAC, DO, ECHO]) + b"he" + bytes([IAC, 241]) + b"llo" + bytes([IAC, WILL, NAWS])
    assert feed_all([stream]) == (
        b"hello",
        bytes([IAC, WONT, ECHO, IAC, DONT, NAWS]),
        False,
    )


def test_the_timing_mark_is_agreed_to_and_refusals_are_not_answered() -> None:
    stream = bytes([IAC, DO, TIMING_MARK, IAC, WONT, ECHO, IAC, DONT, NAWS])
    assert feed_all([stream]) == (b"", bytes([IAC, WILL, TIMING_MARK]), False)


def test_subnegotiation_and_escaped_255() -> None:
    stream = bytes([IAC, SB, NAWS, 0, 80, 0, 24, IAC, SE]) + b"a" + bytes([IAC, IAC]) + b"b"
    assert feed_all([stream]) == (b"a\xffb", b"", False)


def test_ctrl_c_and_break_interrupt() -> None:
    for command in (IP, BRK):
        assert feed_all([b"bye\r\n" + bytes([IAC, command]) + b"ignored"]) == (
            b"bye\r\n",
            b"",
            True,
        )


@given(st.binary(max_size=200), st.data())
def test_any_split_gives_the_same_result(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert feed_all(chunks) == feed_all([stream])


@given(st.text(max_size=100))
def test_utf8_text_passes_untouched(text: str) -> None:
    assert feed_all([text.encode()]) == (text.encode(), b"", False)


def test_telnet_ctrl_c_leaves_the_chat_as_quit_does(start_server) -> None:
    server = start_server("--mode", "chat")
    bob = chat_join(server.port, "bob")
    with Client(server.port) as alice:
        alice.read_until("Enter your username: ")
        alice.send(bytes([IAC, DO, ECHO]) + b"alice\r\n")
        assert alice.read_exactly(3) == bytes([IAC, WONT, ECHO])
        assert alice.read_line() == "Welcome alice!\n"
        assert bob.read_line() == "alice joined the chat\n"
        alice.send(b"hi\r\n" + bytes([IAC, IP, IAC, DO, TIMING_MARK]))
        assert bob.read_line() == "[alice]: hi\n"
        assert bob.read_line() == "alice left the chat\n"
        assert alice.read_line() == "[alice]: hi\n"
        assert alice.read_to_close() == ""
    server.wait_for_log("disconnect", reason="quit")
    bob.close()


def test_echo_mode_never_shows_telnet_commands(start_server) -> None:
    server = start_server("--mode", "echo")
    with Client(server.port) as client:
        client.read_line()
        client.send(b"pi" + bytes([IAC, WILL, NAWS]) + b"ng\r\n")
        assert client.read_exactly(3) == bytes([IAC, DONT, NAWS])
        assert client.read_line().endswith("Echo: ping\n")


def test_basic_mode_passes_every_byte_through(start_server) -> None:
    server = start_server("--mode", "basic")
    with Client(server.port) as client:
        client.read_line()
        client.send(bytes([IAC, IP]))
        assert client.read_exactly(8) == b"Echo: " + bytes([IAC, IP])
