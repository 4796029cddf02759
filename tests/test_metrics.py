"""Prometheus metrics and /healthz, served from the server's own loop."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request

from tests.conftest import WAIT, chat_join


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
