"""Each built-in mode end to end over real sockets on 127.0.0.1, several clients at once."""

from __future__ import annotations

import base64
import re
import socket

from tests.conftest import Client, chat_join

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


# -- basic -----------------------------------------------------------------------------------


def test_basic_welcomes_and_echoes_bytes_without_a_newline(start_server) -> None:
    server = start_server("--mode", "basic")
    with Client(server.port) as client:
        assert client.read_line() == "Welcome to TCP Server!\n"
        client.send("Hello server!")
        assert client.read_until("Echo: Hello server!") == "Echo: Hello server!"
        client.send(b"\xff\x00raw\n")
        assert client.read_exactly(len(b"Echo: \xff\x00raw\n")) == b"Echo: \xff\x00raw\n"


def test_basic_serves_several_clients_independently(start_server) -> None:
    server = start_server("--mode", "basic")
    clients = [Client(server.port) for _ in range(5)]
    for c in clients:
        c.read_line()
    for i, c in enumerate(clients):
        c.send(f"client {i}\n")
    for i, c in enumerate(clients):
        assert c.read_line() == f"Echo: client {i}\n"
        c.close()


# -- echo ------------------------------------------------------------------------------------


def test_echo_counts_clients_online_including_the_new_one(start_server) -> None:
    server = start_server("--mode", "echo")
    first = Client(server.port)
    assert first.read_line() == "Welcome! Currently 1 clients online\n"
    second = Client(server.port)
    assert second.read_line() == "Welcome! Currently 2 clients online\n"
    second.close()
    server.wait_for_log("disconnect")
    third = Client(server.port)
    assert third.read_line() == "Welcome! Currently 2 clients online\n"
    first.close()
    third.close()


def test_echo_answers_each_line_with_a_timestamp_however_tcp_splits_it(start_server) -> None:
    server = start_server("--mode", "echo")
    with Client(server.port) as client:
        client.read_line()
        client.send("  hel")
        client.send("lo  \r\nsecond\n\nthird")
        client.send("\n")
        replies = [client.read_line() for _ in range(4)]
    texts = [re.fullmatch(rf"\[({ISO})\] Echo: (.*)\n", r).group(2) for r in replies]  # type: ignore[union-attr]
    assert texts == ["hello", "second", "", "third"]


def test_echo_broadcasts_uptime_to_everyone(start_server) -> None:
    server = start_server("--mode", "echo", "--uptime-interval", "0.2")
    a, b = Client(server.port), Client(server.port)
    a.read_line()
    b.read_line()
    for client in (a, b):
        line = client.read_until("s\n")
        assert re.fullmatch(r"\[Broadcast\] Server uptime: \d+(\.\d+)?s\n", line), line
    a.close()
    b.close()


def test_echo_line_too_long_is_refused_and_the_connection_goes_on(start_server) -> None:
    server = start_server("--mode", "echo", "--max-line-bytes", "100")
    with Client(server.port) as client:
        client.read_line()
        client.send(b"x" * 5000 + b"\nafter\n")
        assert client.read_line() == "Error: line too long (max 100 bytes)\n"
        assert client.read_line().endswith("] Echo: after\n")


def test_echo_survives_invalid_utf8(start_server) -> None:
    server = start_server("--mode", "echo")
    with Client(server.port) as client:
        client.read_line()
        # (not 0xFF: that is telnet's IAC, which the line modes take out)
        client.send(b"bad \xc3\xc3 bytes\n")
        assert client.read_line().endswith("] Echo: bad \ufffd\ufffd bytes\n")


# -- chat ------------------------------------------------------------------------------------


def test_chat_session_as_in_the_seed(start_server) -> None:
    server = start_server("--mode", "chat")
    alice = chat_join(server.port, "alice")
    bob = chat_join(server.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    alice.send_line("hello all")
    assert alice.read_line() == "[alice]: hello all\n"
    assert bob.read_line() == "[alice]: hello all\n"
    bob.send_line("/users")
    assert bob.read_line() == "Online users: alice, bob\n"
    bob.send_line("/help")
    assert bob.read_until("/quit - Exit chat\n") == (
        "Commands:\n/users - View user list\n/help - Show help\n/quit - Exit chat\n"
    )
    bob.read_until("/bans - List the bans (operators)\n")
    bob.send_line("/wat")
    assert bob.read_line() == "Unknown command. Type /help for help\n"
    bob.send_line("/quit")
    assert bob.read_to_close() == ""
    assert alice.read_line() == "bob left the chat\n"
    alice.send_line("/users")
    assert alice.read_line() == "Online users: alice\n"
    alice.close()


def test_chat_quit_at_the_prompt_just_closes(start_server) -> None:
    server = start_server("--mode", "chat")
    alice = chat_join(server.port, "alice")
    with Client(server.port) as c:
        c.read_until("Enter your username: ")
        c.send_line("/quit")
        assert c.read_to_close() == ""
    alice.send_line("/users")
    assert alice.read_line() == "Online users: alice\n"


def test_chat_leave_is_announced_once_for_every_way_of_going(start_server) -> None:
    server = start_server("--mode", "chat")
    watcher = chat_join(server.port, "watcher")
    # end of stream
    eof = chat_join(server.port, "eof")
    eof.sock.shutdown(socket.SHUT_WR)
    assert eof.read_to_close() == ""
    # reset
    reset = chat_join(server.port, "reset")
    reset.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reset.close()
    seen = [watcher.read_line() for _ in range(4)]
    assert seen[:2] == ["eof joined the chat\n", "eof left the chat\n"]
    assert seen[2:] == ["reset joined the chat\n", "reset left the chat\n"]
    watcher.send_line("/users")
    assert watcher.read_line() == "Online users: watcher\n"
    watcher.close()


def test_chat_idle_timeout_closes_and_announces_the_leave(start_server) -> None:
    server = start_server("--mode", "chat", "--idle-timeout", "0.5")
    sleeper = chat_join(server.port, "sleeper")
    assert sleeper.read_line() == "Timeout - closing connection\n"
    assert sleeper.read_to_close() == ""
    server.wait_for_log("disconnect", name="sleeper", reason="idle timeout")
    fresh = chat_join(server.port, "fresh")
    fresh.send_line("/users")
    assert fresh.read_line() == "Online users: fresh\n"
    fresh.close()


def test_chat_half_closed_client_still_gets_its_replies(start_server) -> None:
    server = start_server("--mode", "chat")
    with Client(server.port) as c:
        c.read_until("Enter your username: ")
        c.send("solo\n/users\nlast words")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_to_close() == "Welcome solo!\nOnline users: solo\n[solo]: last words\n"


def test_chat_line_too_long(start_server) -> None:
    server = start_server("--mode", "chat", "--max-line-bytes", "64")
    alice = chat_join(server.port, "alice")
    alice.send(b"y" * 100_000 + b"\nshort\n")
    assert alice.read_line() == "Error: line too long (max 64 bytes)\n"
    assert alice.read_line() == "[alice]: short\n"
    alice.close()


# -- inspect ---------------------------------------------------------------------------------


def test_inspect_reports_each_chunk(start_server) -> None:
    server = start_server("--mode", "inspect")
    with Client(server.port) as client:
        data = "héllo\n".encode()
        client.send(data)
        report = client.read_until("Base64: " + base64.b64encode(data).decode() + "\n")
        assert report == (
            "Length: 7\nHex: 68c3a96c6c6f0a\n"
            'UTF-8: "héllo\\n"\n'
            f"Base64: {base64.b64encode(data).decode()}\n"
        )


def test_inspect_decodes_a_character_split_across_chunks(start_server) -> None:
    server = start_server("--mode", "inspect")
    with Client(server.port) as client:
        client.send(b"\xe2\x82")
        first = client.read_until("Base64: 4oI=\n")
        assert 'UTF-8: ""' in first
        client.send(b"\xac")
        second = client.read_until("Base64: rA==\n")
        assert 'UTF-8: "€"' in second
        client.send(b"\xff")
        assert 'UTF-8: "\ufffd"' in client.read_until("Base64: /w==\n")
