"""Timeouts, graceful shutdown and signals, start-up errors, and the exit statuses."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import Client, chat_join, run_gserver


@pytest.mark.parametrize("mode", ["basic", "echo", "inspect"])
def test_idle_client_is_told_and_closed(start_server, mode: str) -> None:
    server = start_server("--mode", mode, "--idle-timeout", "0.5")
    with Client(server.port) as client:
        received = client.read_to_close()
    assert received.endswith("Timeout - closing connection\n")
    server.wait_for_log("disconnect", reason="idle timeout")


def test_data_resets_the_idle_clock(start_server) -> None:
    server = start_server("--mode", "echo", "--idle-timeout", "0.6")
    with Client(server.port) as client:
        client.read_line()
        # Talk for twice the timeout, never pausing as long as the timeout.
        for i in range(6):
            time.sleep(0.2)
            client.send_line(f"ping {i}")
            assert client.read_line().endswith(f"Echo: ping {i}\n")
        assert client.read_to_close() == "Timeout - closing connection\n"


def test_keepalive_is_set_on_client_sockets(start_server, tmp_path: Path) -> None:
    handler = tmp_path / "probe.py"
    handler.write_text(
        "import socket\n"
        "def handle(conn):\n"
        "    s = conn._socket  # the accepted socket itself\n"
        "    conn.send(f'{s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)} '\n"
        "              f'{s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)}\\n')\n"
    )
    server = start_server("--handler", "probe:handle", "--keepalive", "42")
    with Client(server.port) as client:
        assert client.read_line() == "1 42\n"


def test_sigterm_tells_everyone_closes_and_exits_0(start_server) -> None:
    server = start_server("--mode", "chat")
    alice = chat_join(server.port, "alice")
    bob = chat_join(server.port, "bob")
    assert alice.read_line() == "bob joined the chat\n"
    server.signal(signal.SIGTERM)
    server.signal(signal.SIGTERM)  # repeated, as process managers do: changes nothing
    assert alice.read_to_close() == "Server shutting down\n"
    assert bob.read_to_close() == "Server shutting down\n"
    assert server.wait() == 0
    assert server.events("stopped")
    with pytest.raises(OSError):
        Client(server.port)


@pytest.mark.parametrize("mode", ["basic", "echo", "inspect"])
def test_sigint_stops_every_mode_gracefully(start_server, mode: str) -> None:
    server = start_server("--mode", mode)
    with Client(server.port) as client:
        if mode == "inspect":  # no greeting: be served before the stop begins
            client.send("x")
            client.read_until("Base64: eA==\n")
        else:
            client.read_line()
        server.signal(signal.SIGINT)
        assert client.read_to_close() == "Server shutting down\n"
    assert server.wait() == 0


def test_second_sigint_exits_at_once_with_1(start_server) -> None:
    server = start_server("--mode", "chat")
    # A client that never closes its side keeps the graceful stop waiting.
    stubborn = chat_join(server.port, "stubborn")
    server.signal(signal.SIGINT)
    server.wait_for_log("shutting_down")
    server.signal(signal.SIGINT)
    assert server.wait() == 1
    stubborn.close()


def test_sigquit_exits_at_once_with_1(start_server) -> None:
    server = start_server("--mode", "chat")
    stubborn = chat_join(server.port, "stubborn")
    server.signal(signal.SIGQUIT)
    assert server.wait() == 1
    stubborn.close()


def test_grace_period_bounds_the_shutdown(start_server) -> None:
    server = start_server("--mode", "basic", "--shutdown-grace", "0.3")
    # This client reads nothing and never closes: the server must not wait for it forever.
    stuck = socket.create_connection(("127.0.0.1", server.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    server.wait_for_log("connect")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert server.wait_for_log("stopped")["unfinished_at_grace_end"] == 1
    stuck.close()


def test_port_in_use_exits_1_with_one_line(start_server, tmp_path: Path) -> None:
    server = start_server("--mode", "basic")
    result = run_gserver("--host", "127.0.0.1", "--port", str(server.port), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"gserver: error: port {server.port} is already in use on 127.0.0.1"
    ]


def test_dual_stack_host_serves_ipv4_and_ipv6(start_server) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = start_server("--mode", "basic", "--host", "::")
    with Client(server.port, "127.0.0.1") as v4:
        assert v4.read_line() == "Welcome to TCP Server!\n"
    with Client(server.port, "::1", socket.AF_INET6) as v6:
        assert v6.read_line() == "Welcome to TCP Server!\n"


def test_a_handler_that_survives_its_kill_still_lets_gserver_stop(
    start_server, tmp_path: Path
) -> None:
    (tmp_path / "stubborn.py").write_text(
        "import gevent\n"
        "def handle(conn):\n"
        "    conn.send('hello\\n')\n"
        "    while True:\n"
        "        try:\n"
        "            gevent.sleep(0.05)\n"
        "        except BaseException:\n"
        "            pass  # a handler that will not die\n"
    )
    server = start_server("--handler", "stubborn:handle", "--shutdown-grace", "0.5", cwd=tmp_path)
    with Client(server.port) as client:
        assert client.read_line() == "hello\n"
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        took = time.monotonic() - started
    assert took < 0.5 + 1, f"stopping took {took:.2f} s"
    assert server.wait_for_log("stopped")["still_running"] == 1
    assert not [line for line in server.raw_stderr if "Traceback" in line]


def test_the_listening_line_says_whether_tls_and_proxy_are_on(start_server) -> None:
    plain = start_server("--mode", "basic").wait_for_log("listening")
    assert (plain["tls"], plain["proxy_protocol"]) == (False, False)
    proxied = start_server("--mode", "basic", "--proxy-protocol").wait_for_log("listening")
    assert (proxied["tls"], proxied["proxy_protocol"]) == (False, True)
