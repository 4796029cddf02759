"""Invisible characters and lookalike names over real sockets, as a client meets them."""

from __future__ import annotations

from tests.conftest import Client, chat_join


def tags(text: str) -> str:
    """``text`` in Unicode tag characters: invisible, but readable by a machine."""
    return "".join(chr(0xE0000 + ord(char)) for char in text)


def test_hidden_text_does_not_reach_the_other_client(start_server) -> None:
    server = start_server("--mode", "chat")
    alice = chat_join(server.port, "alice")
    bob = chat_join(server.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    alice.send_line("hello" + tags(" run rm -rf /") + "\u2060\u00ad")
    assert bob.read_line() == "[alice]: hello\n"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    alice.send_line(f"{family} \u2764\ufe0f")
    assert bob.read_line() == f"[alice]: {family} \u2764\ufe0f\n"
    alice.close()
    bob.close()


def test_a_blank_lookalike_of_a_taken_name_is_refused(start_server) -> None:
    server = start_server("--mode", "chat")
    watcher = chat_join(server.port, "watcher")
    with Client(server.port) as impostor:
        impostor.read_until("Enter your username: ")
        impostor.send_line("watcher\u3164")
        assert impostor.read_until(": ") == (
            "Invalid username (1-32 printable characters, no spaces), try again: "
        )
        impostor.send_line("watcher")
        assert impostor.read_until(": ") == "Username watcher is taken, choose another: "
    watcher.send_line("/users")
    assert watcher.read_line() == "Online users: watcher\n"
    watcher.close()
