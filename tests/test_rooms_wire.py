"""Rooms, history and operators over real sockets, as users meet them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, Client, chat_join, clean_env

PASSWORD = "open sesame"


@pytest.fixture(scope="module")
def password_hash() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gserver", "hash-password"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scrypt$")  # the hash alone on stdout
    assert PASSWORD not in result.stdout + result.stderr
    return lines[0]


def test_hash_password_refuses_an_empty_password() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gserver", "hash-password"],
        input="\n",
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1


def test_rooms_keep_their_talk_to_themselves(start_server) -> None:
    server = start_server("--mode", "chat", "--flood-rate", "0")
    alice = chat_join(server.port, "alice")
    bob = chat_join(server.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    bob.send_line("/join #dev")
    assert bob.read_line() == "You joined #dev\n"
    assert alice.read_line() == "bob went to #dev\n"
    bob.send_line("/topic release on friday")
    assert bob.read_line() == "bob set the topic: release on friday\n"
    bob.send_line("only dev hears this")
    assert bob.read_line() == "[bob]: only dev hears this\n"
    alice.send_line("/rooms")
    assert alice.read_line() == "Rooms: #dev (1), #lobby (1)\n"
    alice.send_line("/users")
    assert alice.read_line() == "Online users: alice\n"  # nothing of #dev reached the lobby
    alice.send_line("/join DEV")
    assert alice.read_line() == "You joined #dev\n"
    assert alice.read_line() == "Topic for #dev: release on friday\n"
    assert bob.read_line() == "alice joined #dev\n"
    bob.send_line("/quit")
    assert alice.read_line() == "bob left the chat\n"
    alice.close()
    bob.close()


def test_history_greets_whoever_enters(start_server) -> None:
    server = start_server("--mode", "chat", "--history-lines", "2", "--flood-rate", "0")
    alice = chat_join(server.port, "alice")
    for line in ("one", "two", "three"):
        alice.send_line(line)
        alice.read_line()
    with Client(server.port) as bob:
        bob.read_until("Enter your username: ")
        bob.send_line("bob")
        assert bob.read_line() == "Welcome bob!\n"
        first, second = bob.read_line(), bob.read_line()
        assert first.startswith("[20") and first.endswith("Z] [alice]: two\n")
        assert second.endswith("Z] [alice]: three\n")
    alice.close()


def test_operators_ban_and_the_password_never_reaches_the_log(
    start_server, password_hash: str
) -> None:
    server = start_server(
        "--mode", "chat", "--oper-password", password_hash, "--log-level", "debug"
    )
    op = chat_join(server.port, "op")
    mallory = chat_join(server.port, "mallory")
    op.read_line()
    mallory.send_line("/kick op")
    assert mallory.read_line() == "Permission denied\n"
    op.send_line("/oper not it")
    assert op.read_line() == "Wrong password\n"
    op.send_line(f"/OPER {PASSWORD}")
    assert op.read_line() == "You are now an operator\n"
    op.send_line("/users")
    assert op.read_line() == "Online users: @op, mallory\n"
    op.send_line("/ban mallory 10 flooding")
    assert mallory.read_line() == "You were banned by op: flooding\n"
    assert mallory.read_to_close() == ""
    assert op.read_line() == "mallory was banned by op: flooding\n"
    with Client(server.port) as again:  # the same address: refused before any prompt
        assert again.read_to_close() == "You are banned\n"
    op.send_line("/bans")
    assert op.read_line() == "127.0.0.1 (10 minutes left)\n"
    op.send_line("/unban 127.0.0.1")
    assert op.read_line() == "Unbanned 127.0.0.1\n"
    with Client(server.port) as back:
        assert back.read_until(": ") == "Enter your username: "
    server.wait_for_log("oper", name="op")
    assert server.wait_for_log("oper_failed")["client"].startswith("127.0.0.1:")
    assert any(e.get("text") == "/oper ***" for e in server.events("line"))
    assert not [line for line in server.raw_stderr if PASSWORD in line]
    op.close()


def test_three_wrong_passwords_close_the_connection(start_server, password_hash: str) -> None:
    server = start_server("--mode", "chat", "--oper-password", password_hash)
    eve = chat_join(server.port, "eve")
    for _ in range(3):
        eve.send_line("/oper guess")
        assert eve.read_line() == "Wrong password\n"
    assert eve.read_to_close() == ""


def test_a_bad_password_hash_is_a_setting_error(start_server) -> None:
    from tests.conftest import run_gserver

    result = run_gserver("--oper-password", "hunter2", cwd=REPO)
    assert result.returncode == 2
    assert "setting 'oper_password'" in result.stderr
    assert "hunter2" not in result.stderr  # it may be the password, pasted by mistake
