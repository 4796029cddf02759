"""Clients that misbehave: bad names and bytes, slow readers, floods, full houses, broken
peers, PROXY headers.  Limits are asserted on the server's own log events and settings."""

from __future__ import annotations

import resource
import select
import socket
import struct
import threading
import time

import pytest

from gserver.testing.probes import cpu_seconds, rss_bytes
from tests.conftest import WAIT, Client, chat_join


def reset(client: Client) -> None:
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


# -- names, commands, sanitising ---------------------------------------------------------------


def test_taken_and_invalid_names_over_the_wire(start_server) -> None:
    server = start_server("--mode", "chat")
    alice = chat_join(server.port, "Alice")
    with Client(server.port) as other:
        other.read_until("Enter your username: ")
        other.send_line("aLiCe")
        assert other.read_until(": ") == "Username aLiCe is taken, choose another: "
        other.send_line("has space")
        assert other.read_until("try again: ") == (
            "Invalid username (1-32 printable characters, no spaces), try again: "
        )
        other.send_line("bob")
        assert other.read_line() == "Welcome bob!\n"
        assert alice.read_line() == "bob joined the chat\n"
        other.send_line("/nick Bobby")
        assert other.read_line() == "You are now known as Bobby\n"
        assert alice.read_line() == "bob is now known as Bobby\n"
        other.send_line("/msg alice psst")
        assert other.read_line() == "[you -> Alice]: psst\n"
        assert alice.read_line() == "[Bobby -> you]: psst\n"
        other.send_line("/me waves")
        assert alice.read_line() == "* Bobby waves\n"
        assert other.read_line() == "* Bobby waves\n"
        other.send_line("/msg nobody hi")
        assert other.read_line() == "No such user: nobody\n"
    alice.close()


def test_relayed_text_cannot_drive_terminals_but_keeps_unicode(start_server) -> None:
    server = start_server("--mode", "chat")
    alice = chat_join(server.port, "alice")
    bob = chat_join(server.port, "bob")
    alice.read_line()
    bob.send(b"\x1b[2J\x1b[31mred\x1b[0m \xe2\x80\xaeevil\x00 \xc3 caf\xc3\xa9 \xf0\x9f\x91\x8b\n")
    expected = "[bob]: red evil \ufffd café 👋\n"
    assert alice.read_line() == expected
    assert bob.read_line() == expected
    alice.close()
    bob.close()


# -- slow consumers ----------------------------------------------------------------------------


def stalled_reader(port: int, name: str) -> socket.socket:
    """A chat client that joins, then never reads again, with a tiny receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(name.encode() + b"\n")
    return sock


def test_a_stalled_reader_is_dropped_and_delays_no_one(start_server) -> None:
    limit = 256 * 1024
    server = start_server("--mode", "chat", "--flood-rate", "0", "--max-output-bytes", str(limit))
    readers = [chat_join(server.port, f"reader{i}") for i in range(3)]
    stalled = stalled_reader(server.port, "stalled")
    server.wait_for_log("chat_name", name="stalled")
    rss_before = rss_bytes(server.proc.pid)
    line = "x" * 1000
    count = 10_000  # 10 MB to everyone: more than the kernel buffers and the queue limit hold
    failures: list[str] = []

    def read_all(reader: Client) -> None:
        for i in range(count):
            got = reader.read_line()
            while got.startswith(("stalled", "reader")):  # join and leave notices
                got = reader.read_line()
            if got != f"[reader0]: {i} {line}\n":
                failures.append(got)
                return

    threads = [threading.Thread(target=read_all, args=(r,)) for r in readers]
    for thread in threads:
        thread.start()
    for i in range(count):
        readers[0].send_line(f"{i} {line}")
    for thread in threads:
        thread.join(60)
    assert not failures
    event = server.wait_for_log("slow_consumer", name="stalled")
    assert limit < event["queued_bytes"] <= limit + len(line) + 100
    server.wait_for_log("disconnect", name="stalled", reason="slow consumer")
    # Everything went to three readers; the stalled one never held more than its limit.
    assert rss_bytes(server.proc.pid) - rss_before < 40 * 1024 * 1024
    readers[1].send_line("/users")
    while (answer := readers[1].read_line()).startswith("stalled"):
        pass
    assert answer == "Online users: reader0, reader1, reader2\n"
    stalled.close()
    for reader in readers:
        reader.close()


def test_no_write_progress_for_write_timeout_drops_the_client(start_server) -> None:
    server = start_server(
        "--mode",
        "chat",
        "--flood-rate",
        "0",
        "--max-output-bytes",
        str(512 * 1024 * 1024),
        "--write-timeout",
        "0.5",
    )
    talker = chat_join(server.port, "talker")
    stalled = stalled_reader(server.port, "stalled")
    talker.read_line()
    line = "y" * 10_000
    for i in range(1000):  # 10 MB: more than the kernel buffers between us hold
        talker.send_line(f"{i} {line}")
        talker.read_line()
    server.wait_for_log("slow_consumer", name="stalled")
    server.wait_for_log("disconnect", name="stalled", reason="slow consumer")
    stalled.close()
    talker.close()


# -- flood control -----------------------------------------------------------------------------


def test_a_flooder_is_slowed_loses_nothing_and_delays_no_one(start_server) -> None:
    server = start_server("--mode", "chat", "--flood-rate", "20", "--flood-burst", "5")
    flooder = chat_join(server.port, "flooder")
    calm = chat_join(server.port, "calm")
    flooder.read_line()
    flooder.send("".join(f"flood {i}\n" for i in range(40)))
    server.wait_for_log("flood_throttled", name="flooder")
    calm.send_line("still served")
    # The calm client's line overtakes the flooder's backlog: the flooder alone waits.
    seen = []
    while (got := calm.read_line()) != "[calm]: still served\n":
        seen.append(got)
    assert len(seen) < 40
    rest = [calm.read_line() for _ in range(40 - len(seen))]
    assert seen + rest == [f"[flooder]: flood {i}\n" for i in range(40)]
    flooder.close()
    calm.close()


# -- capacity ----------------------------------------------------------------------------------


def test_a_client_over_max_clients_is_told_the_server_is_full(start_server) -> None:
    server = start_server("--mode", "basic", "--max-clients", "2")
    first, second = Client(server.port), Client(server.port)
    first.read_line()
    second.read_line()
    with Client(server.port) as third:
        assert third.read_to_close() == "Server full, try again later\n"
    server.wait_for_log("refused", reason="max_clients")
    first.close()
    server.wait_for_log("disconnect")
    with Client(server.port) as fourth:
        assert fourth.read_line() == "Welcome to TCP Server!\n"
    second.close()


def test_a_burst_of_connects_cannot_pass_max_clients(start_server) -> None:
    server = start_server("--mode", "basic", "--max-clients", "5")
    burst = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
    greetings = []
    for sock in burst:
        sock.settimeout(10)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(100)
            if not chunk:
                break
            reply += chunk
        greetings.append(reply)
    assert greetings.count(b"Welcome to TCP Server!\n") == 5
    assert greetings.count(b"Server full, try again later\n") == 25
    for sock in burst:
        sock.close()


def test_clients_that_come_and_go_leave_no_count_behind(start_server) -> None:
    server = start_server(
        "--mode", "basic", "--max-clients", "3", "--max-clients-per-ip", "3", "--proxy-protocol"
    )
    header = b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 8080\r\n"
    for i in range(30):
        with Client(server.port) as client:
            if i % 3 == 0:
                client.send(b"garbage instead of a header\r\n")  # handshake fails
                assert client.read_to_close() == ""
            else:
                client.send(header)
                assert client.read_line() == "Welcome to TCP Server!\n"
                if i % 3 == 2:
                    reset(client)
    server.wait_for_events("disconnect", 20)
    # Every admission was given back: three clients at once are all served.
    clients = [Client(server.port) for _ in range(3)]
    for client in clients:
        client.send(header)
        assert client.read_line() == "Welcome to TCP Server!\n"
        client.close()


def test_max_clients_per_ip(start_server) -> None:
    server = start_server("--mode", "basic", "--max-clients-per-ip", "1")
    with Client(server.port) as first:
        first.read_line()
        with Client(server.port) as second:
            assert second.read_to_close() == "Server full, try again later\n"


def test_max_clients_is_lowered_to_fit_the_open_file_limit(start_server) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 200:
        pytest.skip("open-file limit already too low to test")
    # The server starts with a soft limit of 100 and a hard limit of 200: it raises the
    # soft one, and 10000 clients still cannot fit.
    server = start_server("--mode", "basic", "--max-clients", "10000", open_files=(100, 200))
    warning = server.wait_for_log("max_clients_lowered")
    assert warning["open_file_limit"] == 200
    assert server.wait_for_log("listening")["max_clients"] == warning["lowered_to"] < 200


# -- bad bytes and broken peers ----------------------------------------------------------------


def test_a_100_mb_line_is_refused_with_bounded_memory(start_server) -> None:
    server = start_server("--mode", "echo", "--flood-rate", "0")
    with Client(server.port) as client:
        client.read_line()
        rss_before = rss_bytes(server.proc.pid)
        block = b"z" * (1024 * 1024)
        for _ in range(100):
            client.send(block)
        client.send(b"\nafter\n")
        assert client.read_line() == "Error: line too long (max 16384 bytes)\n"
        assert client.read_line().endswith("] Echo: after\n")
        assert rss_bytes(server.proc.pid) - rss_before < 20 * 1024 * 1024


@pytest.mark.parametrize("mode", ["basic", "inspect"])
def test_a_sender_that_never_reads_is_slowed_by_backpressure(start_server, mode: str) -> None:
    server = start_server("--mode", mode)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setblocking(False)
    rss_before = rss_bytes(server.proc.pid)
    block = b"q" * 65536
    sent = 0
    while sent < 200 * 1024 * 1024:
        try:
            sent += sock.send(block)
        except BlockingIOError:
            # Blocked: if the server stays unwilling to read for a second, it is pushing back.
            _, writable, _ = select.select([], [sock], [], 1.0)
            if not writable:
                break
    assert sent < 100 * 1024 * 1024, "the server kept reading from a client that never reads"
    assert rss_bytes(server.proc.pid) - rss_before < 30 * 1024 * 1024
    # Once the client reads again, the server goes on.
    sock.setblocking(True)
    sock.settimeout(10)
    assert sock.recv(65536)
    sock.close()


def test_reset_in_mid_line_leaks_nothing(start_server) -> None:
    server = start_server("--mode", "chat")
    watcher = chat_join(server.port, "watcher")
    victim = chat_join(server.port, "victim")
    watcher.read_line()
    victim.send("half a li")
    reset(victim)
    assert watcher.read_line() == "victim left the chat\n"
    server.wait_for_log("disconnect", name="victim", reason="reset by client")
    watcher.send_line("/users")
    assert watcher.read_line() == "Online users: watcher\n"
    assert not server.events("handler_error")
    assert not any("Traceback" in line for line in server.raw_stderr)
    watcher.close()


def test_nul_bytes_are_harmless(start_server) -> None:
    server = start_server("--mode", "echo")
    with Client(server.port) as client:
        client.read_line()
        client.send(b"a\x00b\x00\n")
        assert client.read_line().endswith("] Echo: a\x00b\x00\n")


# -- ordering ----------------------------------------------------------------------------------


def test_every_line_reaches_everyone_once_and_in_order(start_server) -> None:
    server = start_server("--mode", "chat", "--flood-rate", "0")
    senders, lines_each = 20, 100
    clients = [chat_join(server.port, f"c{i}") for i in range(senders)]
    for i, client in enumerate(clients):  # drain the join notices
        for j in range(i + 1, senders):
            assert client.read_line() == f"c{j} joined the chat\n"

    def blast(index: int) -> None:
        clients[index].send("".join(f"{index}:{n}\n" for n in range(lines_each)))

    threads = [threading.Thread(target=blast, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for client in clients:
        next_expected = [0] * senders
        for _ in range(senders * lines_each):
            name, _, text = client.read_line().partition("]: ")
            sender, number = (int(part) for part in text.split(":"))
            assert name == f"[c{sender}"
            assert number == next_expected[sender]
            next_expected[sender] += 1
        assert next_expected == [lines_each] * senders
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()


# -- PROXY protocol ----------------------------------------------------------------------------


def proxy_v2(ip: str, port: int) -> bytes:
    body = socket.inet_aton(ip) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 80)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize(
    "header",
    [b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\n", proxy_v2("203.0.113.7", 5555)],
    ids=["v1", "v2"],
)
def test_proxy_protocol_gives_the_real_client_address(start_server, header: bytes) -> None:
    server = start_server("--mode", "echo", "--proxy-protocol", "--max-clients-per-ip", "1")
    with Client(server.port) as client:
        client.send(header + b"hello\n")
        assert client.read_line() == "Welcome! Currently 1 clients online\n"
        assert client.read_line().endswith("] Echo: hello\n")
        server.wait_for_log("connect", client="203.0.113.7:5555")
        # A second client from the same real address is over the per-IP limit.
        with Client(server.port) as twin:
            twin.send(header)
            assert twin.read_to_close() == "Server full, try again later\n"


def test_a_bad_proxy_header_is_closed_quietly(start_server) -> None:
    server = start_server("--mode", "echo", "--proxy-protocol")
    with Client(server.port) as client:
        client.send(b"GET / HTTP/1.1\r\n\r\n")
        assert client.read_to_close() == ""
    server.wait_for_log("handshake_failed")
    assert not any("Traceback" in line for line in server.raw_stderr)


def test_partial_proxy_headers_cost_nothing_while_they_wait(start_server) -> None:
    server = start_server("--mode", "basic", "--proxy-protocol", "--handshake-timeout", "30")
    waiting = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        sock.sendall(b"PROXY TCP4 1.2.3.4")  # and nothing more
        waiting.append(sock)
    try:
        with Client(server.port) as client:  # all accepted and parked by now
            client.send("PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n")
            assert client.read_line() == "Welcome to TCP Server!\n"
        before = cpu_seconds(server.proc.pid)
        time.sleep(1.0)  # a window to measure CPU in, not a wait for an event
        used = cpu_seconds(server.proc.pid) - before
        # Polling 300 partial headers every 10 ms kept a core busy; waiting costs nothing.
        assert used < 0.2, f"{used:.2f} CPU seconds in 1 s while headers waited"
        # The rest of a header completes it, at any time.
        waiting[0].sendall(b" 5.6.7.8 1111 2222\r\n")
        waiting[0].settimeout(WAIT)
        assert waiting[0].recv(100) == b"Welcome to TCP Server!\n"
    finally:
        for sock in waiting:
            sock.close()


def test_a_partial_proxy_header_then_end_of_stream_is_closed_at_once(start_server) -> None:
    server = start_server("--mode", "basic", "--proxy-protocol", "--handshake-timeout", "30")
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(b"PROXY TCP4 1.2.3.4")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # closed now, not at the end of handshake_timeout
    assert "end of the PROXY header" in server.wait_for_log("handshake_failed", timeout=5)["error"]


def test_over_long_lines_are_flood_controlled_and_logged_sparingly(start_server) -> None:
    server = start_server(
        "--mode", "echo", "--max-line-bytes", "8", "--flood-rate", "20", "--flood-burst", "5"
    )
    with Client(server.port) as client:
        client.read_line()
        client.send(b"far too long a line\n" * 30)
        for _ in range(30):
            assert client.read_line() == "Error: line too long (max 8 bytes)\n"
        client.send_line("short")
        assert client.read_line().endswith("Echo: short\n")
    server.wait_for_log("flood_throttled")
    assert len(server.events("line_too_long")) == 1  # and 29 not logged, within 5 s


def test_users_never_drops_the_client_who_asked(start_server) -> None:
    server = start_server("--mode", "chat", "--max-output-bytes", "4096", "--flood-rate", "0")
    crowd = [chat_join(server.port, f"{'x' * 26}{i:04d}") for i in range(200)]
    try:
        asker = crowd[-1]
        asker.send_line("/users")
        reply = asker.read_line()
        assert reply.startswith("Online users: ")
        assert reply.endswith(" more)\n")
        assert len(reply.encode()) <= 4096 // 4
        asker.send_line("/help")
        assert asker.read_line() == "Commands:\n"  # still connected
    finally:
        for client in crowd:
            client.close()
    assert server.events("slow_consumer") == []
