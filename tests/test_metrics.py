"""Prometheus metrics and /healthz, served from the server's own loop."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request

from tests.conftest import WAIT, Client, chat_join


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_and_health(start_server) -> None:
    server = start_server("--mode", "chat", "--metrics-port", "0", "--flood-rate", "0")
    port = server.wait_for_log("metrics_listening")["port"]
    alice = chat_join(server.port, "alice")
    alice.send_line("one")
    alice.read_line()
    status, body = http_get(port, "/metrics")
    assert status == 200
    assert "gserver_connected_clients 1.0" in body
    assert "gserver_lines_in_total 2.0" in body  # the name and one message
    # out: the prompt, the welcome and the echoed message
    assert "gserver_lines_out_total 3.0" in body
    assert 'gserver_refused_total{reason="max_clients"} 0.0' in body
    assert http_get(port, "/healthz") == (200, "ok\n")
    alice.close()


def test_healthz_is_503_while_shutting_down(start_server) -> None:
    server = start_server("--mode", "chat", "--metrics-port", "0")
    port = server.wait_for_log("metrics_listening")["port"]
    stubborn = chat_join(server.port, "stubborn")  # never closes: the stop waits for it
    server.signal(signal.SIGTERM)
    server.wait_for_log("shutting_down")
    assert http_get(port, "/healthz") == (503, "shutting down\n")
    stubborn.close()
    assert server.wait() == 0


def test_metrics_listen_on_loopback_unless_told_otherwise(start_server) -> None:
    server = start_server("--mode", "basic", "--host", "0.0.0.0", "--metrics-port", "0")
    assert server.wait_for_log("metrics_listening")["host"] == "127.0.0.1"
    other = start_server("--mode", "basic", "--metrics-port", "0", "--metrics-host", "::1")
    port = other.wait_for_log("metrics_listening")["port"]
    with socket.create_connection(("::1", port), timeout=WAIT):
        pass


def test_idle_metrics_connections_cannot_starve_the_chat(start_server) -> None:
    server = start_server(
        "--mode",
        "chat",
        "--metrics-port",
        "0",
        "--handshake-timeout",
        "0.5",
        open_files=(64, 64),
    )
    port = server.wait_for_log("metrics_listening")["port"]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(60)]
    try:
        # Every chat client is still answered: a prompt, or "Server full" past max_clients.
        for _ in range(40):
            with Client(server.port) as client:
                first = client.read_until(": ") if client.peek(1) == b"E" else client.read_line()
                assert first in ("Enter your username: ", "Server full, try again later\n")
        # The idle ones are closed by the server after handshake_timeout.
        assert idle[0].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert http_get(port, "/healthz") == (200, "ok\n")
    assert not [line for line in server.raw_stderr if "Traceback" in line]
