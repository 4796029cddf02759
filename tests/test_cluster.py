"""Scale-out: chat across processes through a real Redis, --workers, metrics and health."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import REDIS_SERVER, WAIT, Client, Redis, ServerProcess, chat_join, run_gserver
from tests.test_metrics import http_get

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)"
)


def node(start_server, redis_server: Redis, *args: str) -> ServerProcess:
    server = start_server("--backplane", redis_server.url, *args)
    server.wait_for_log("backplane_up")
    return server


def test_chat_crosses_two_gservers_through_redis(start_server, redis_server: Redis) -> None:
    one = node(start_server, redis_server, "--mode", "chat")
    two = node(start_server, redis_server, "--mode", "chat")
    alice = chat_join(one.port, "alice")
    bob = chat_join(two.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    alice.send_line("hello from one")
    assert bob.read_line() == "[alice]: hello from one\n"
    assert alice.read_line() == "[alice]: hello from one\n"
    bob.send_line("/users")
    assert bob.read_line() == "Online users: alice, bob\n"
    bob.send_line("/msg ALICE psst")
    assert bob.read_line() == "[you -> alice]: psst\n"
    assert alice.read_line() == "[bob -> you]: psst\n"
    bob.send_line("/me waves")
    assert alice.read_line() == "* bob waves\n"
    # A name taken on one node is taken on the other, whatever its case.
    with Client(two.port) as twin:
        twin.read_until("Enter your username: ")
        twin.send_line("Alice")
        assert twin.read_until(": ") == "Username Alice is taken, choose another: "
    bob.send_line("/nick robert")
    assert alice.read_line() == "bob is now known as robert\n"
    bob.send_line("/quit")
    assert alice.read_line() == "robert left the chat\n"
    alice.send_line("/users")
    assert alice.read_line() == "Online users: alice\n"
    alice.close()


def redis_command(redis_server: Redis, *words: str) -> bytes:
    """One command over a raw socket, as any client of that Redis could send it."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=WAIT) as s:
        s.sendall(request.encode())
        return s.recv(1024)


def test_garbage_on_the_channel_and_renames_keep_the_cluster_whole(
    start_server, redis_server: Redis
) -> None:
    one = node(start_server, redis_server, "--mode", "chat")
    two = node(start_server, redis_server, "--mode", "chat")
    alice = chat_join(one.port, "alice")
    bob = chat_join(two.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    for junk in ("5", "not json", '{"t": "room", "ts": "x", "text": 1}', "[1, 2]"):
        redis_command(redis_server, "PUBLISH", "gserver:events", junk)
    one.wait_for_events("bad_event", 2)
    bob.send_line("still connected")
    assert alice.read_line() == "[bob]: still connected\n"
    # A rename that only changes case is one name, listed once everywhere.
    bob.send_line("/nick BOB")
    assert alice.read_line() == "bob is now known as BOB\n"
    alice.send_line("/users")
    assert alice.read_line() == "Online users: alice, BOB\n"
    assert not any("Traceback" in line for line in one.raw_stderr + two.raw_stderr)
    alice.close()
    bob.close()


def greeted_with(port: int, greeting: str) -> Client:
    """A client whose greeting is ``greeting``, connecting again until it is (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        client = Client(port)
        got = client.read_line()
        if got == greeting:
            return client
        client.close()
        assert time.monotonic() < deadline, f"greeting stayed {got!r}, wanted {greeting!r}"


def test_echo_counts_and_broadcasts_across_the_cluster(
    start_server, redis_server: Redis, tmp_path: Path
) -> None:
    (tmp_path / "announcer.py").write_text(
        "def handle(conn):\n"
        "    conn.send(f'{conn.registry.count_online()} online\\n')\n"
        "    for line in conn.lines():\n"
        "        conn.registry.broadcast(line)\n"
    )
    one = node(start_server, redis_server, "--mode", "echo")
    two = node(start_server, redis_server, "--mode", "echo")
    first = Client(one.port)
    assert first.read_line() == "Welcome! Currently 1 clients online\n"
    # Counts travel as events (nothing on a connect waits on Redis): the first client is
    # counted on the other node as soon as its event has arrived there.
    second = greeted_with(two.port, "Welcome! Currently 2 clients online\n")
    three = node(start_server, redis_server, "--handler", "announcer:handle")
    with greeted_with(three.port, "3 online\n") as third:
        third.send_line("to everyone")
        for client in (first, second, third):
            assert client.read_line() == "[Broadcast] to everyone\n"
    first.close()
    second.close()


def test_redis_going_away_and_coming_back(start_server, redis_server: Redis) -> None:
    one = node(start_server, redis_server, "--mode", "chat", "--metrics-port", "0")
    two = node(start_server, redis_server, "--mode", "chat")
    alice = chat_join(one.port, "alice")
    carol = chat_join(one.port, "carol")
    bob = chat_join(two.port, "bob")
    assert alice.read_line() == "carol joined the chat\n"
    assert alice.read_line() == "bob joined the chat\n"
    assert carol.read_line() == "bob joined the chat\n"

    redis_server.kill()
    one.wait_for_log("backplane_down")
    two.wait_for_log("backplane_down")
    metrics_port = one.wait_for_log("metrics_listening")["port"]
    assert http_get(metrics_port, "/healthz")[0] == 503
    # Clients on the same process keep chatting.
    alice.send_line("still here")
    assert carol.read_line() == "[alice]: still here\n"
    # Someone joins the other side during the outage.
    dave = chat_join(two.port, "dave")

    redis_server.start()
    one.wait_for_events("backplane_up", 2, timeout=30)
    two.wait_for_events("backplane_up", 2, timeout=30)
    assert http_get(metrics_port, "/healthz")[0] == 200
    alice.send_line("/users")
    names = read_until_prefix(alice, "Online users: ")
    assert names == "Online users: alice, carol, bob, dave\n"
    dave.send_line("back together")
    assert read_until_prefix(alice, "[dave]") == "[dave]: back together\n"
    assert not any("Traceback" in line for line in one.raw_stderr + two.raw_stderr)
    for client in (alice, carol, bob, dave):
        client.close()


def test_a_crashed_nodes_users_vanish_within_the_ttl(start_server, redis_server: Redis) -> None:
    one = node(start_server, redis_server, "--mode", "chat")
    two = node(start_server, redis_server, "--mode", "chat")
    alice = chat_join(one.port, "alice")
    bob = chat_join(two.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    two.proc.kill()  # no goodbye: only the heartbeat's expiry tells
    two.wait()
    deadline = time.monotonic() + WAIT
    while True:
        alice.send_line("/users")
        if alice.read_line() == "Online users: alice\n":
            break
        assert time.monotonic() < deadline, "the crashed node's user is still listed"
        time.sleep(0.5)
    # and the name is free again
    with Client(one.port) as new_bob:
        new_bob.read_until("Enter your username: ")
        new_bob.send_line("bob")
        assert new_bob.read_line() == "Welcome bob!\n"
    alice.close()
    bob.close()


def read_until_prefix(client: Client, prefix: str) -> str:
    while not (line := client.read_line()).startswith(prefix):
        pass
    return line


def worker_of(server: ServerProcess, client_port: int) -> int:
    entry = server.wait_for_log("connect", client=f"127.0.0.1:{client_port}")
    return int(entry["pid"])


def test_two_workers_share_one_port_and_chat_crosses_them(
    start_server, redis_server: Redis
) -> None:
    server = start_server("--mode", "chat", "--workers", "2", "--backplane", redis_server.url)
    server.wait_for_events("backplane_up", 2)
    by_worker: dict[int, Client] = {}
    spare: list[Client] = []
    for _ in range(200):
        client = Client(server.port)
        client.read_until("Enter your username: ")
        pid = worker_of(server, client.sock.getsockname()[1])
        if pid in by_worker:
            spare.append(client)
        else:
            by_worker[pid] = client
        if len(by_worker) == 2:
            break
    assert len(by_worker) == 2, "every connection went to one worker"
    assert len({e["worker_pid"] for e in server.events("worker_started")}) == 2
    first, second = by_worker.values()
    first.send_line("ann")
    assert first.read_line() == "Welcome ann!\n"
    second.send_line("ben")
    assert second.read_line() == "Welcome ben!\n"
    assert first.read_line() == "ben joined the chat\n"
    second.send_line("across workers")
    assert first.read_line() == "[ben]: across workers\n"
    for client in [*by_worker.values(), *spare]:
        client.close()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def test_the_master_restarts_a_worker_that_dies(start_server) -> None:
    server = start_server("--mode", "basic", "--workers", "2")
    server.wait_for_events("listening", 2)
    victim = server.events("worker_started")[0]["worker_pid"]
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log("worker_exited", worker_pid=victim)
    server.wait_for_events("listening", 3)
    with Client(server.port) as client:
        assert client.read_line() == "Welcome to TCP Server!\n"
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert len(server.wait_for_events("stopped", 3)) == 3  # two workers and the master


def test_workers_keep_port_in_use_an_error(start_server, tmp_path: Path) -> None:
    server = start_server("--mode", "basic", "--workers", "2")
    result = run_gserver(
        "--mode",
        "basic",
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "already in use" in result.stderr


@pytest.mark.parametrize("mode", ["basic", "echo", "chat", "inspect"])
def test_a_hung_redis_delays_no_greeting(start_server, redis_server: Redis, mode: str) -> None:
    server = node(start_server, redis_server, "--mode", mode)
    other = node(start_server, redis_server, "--mode", mode)
    with Client(other.port) as elsewhere:
        if mode == "chat":
            elsewhere.read_until(": ")
        elif mode != "inspect":
            elsewhere.read_line()
        # Counted on the first node once its count event has arrived there.
        if mode == "echo":
            greeted_with(server.port, "Welcome! Currently 2 clients online\n").close()
        redis_server.hang()
        try:
            for _ in range(3):  # connects and disconnects: none may wait on Redis
                with Client(server.port) as client:
                    client.sock.settimeout(1.0)  # a blocking Redis call would take 5 s
                    if mode == "basic":
                        assert client.read_line() == "Welcome to TCP Server!\n"
                    elif mode == "echo":
                        # The other node's client, as last known, still counts.
                        assert client.read_line() == "Welcome! Currently 2 clients online\n"
                    elif mode == "chat":
                        assert client.read_until(": ") == "Enter your username: "
                    else:
                        client.send(b"x")
                        assert client.read_line() == "Length: 1\n"
        finally:
            redis_server.resume()
