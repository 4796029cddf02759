"""Prometheus metrics and a health check, served from the server's own gevent loop.

The counters live in plain integers (``counters.Stats``) and are read as a snapshot only
when Prometheus scrapes, so the hot path pays one integer increment per event.  The port
listens on ``metrics_host`` (loopback by default), serves a few connections at once and
closes one that sends nothing for ``handshake_timeout`` seconds, so that it can never use
up the descriptors the chat keeps in reserve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gserver.counters import Snapshot
from gserver.listener import StartError, open_listener

if TYPE_CHECKING:
    from gserver.server import Server

StartResponse = Callable[..., Any]
MAX_CONNECTIONS = 8  # scrapers and health checkers at once; more wait in the backlog


class SnapshotCollector:
    """Turns one snapshot of a server's counters into Prometheus metrics at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # metrics are known only at collect time; skip registration-time checks

    def collect(self) -> Iterator[Metric]:
        now = self.snapshot()
        stats = now.stats

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"gserver_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"gserver_{name}", doc, value=value)

        yield gauge("connected_clients", "Clients connected to this process", now.connected)
        yield gauge(
            "accepting", "1 while accepting new clients, 0 while shutting down", now.accepting
        )
        connections = CounterMetricFamily(
            "gserver_connections", "Clients accepted since start", labels=["transport"]
        )
        others = stats.connections_by_transport
        connections.add_metric(["tcp"], stats.connections_total - sum(others.values()))
        for transport in ("websocket", *sorted(others.keys() - {"websocket"})):
            connections.add_metric([transport], others.get(transport, 0))
        yield connections
        yield counter("lines_in", "Lines received from clients", stats.lines_in)
        yield counter(
            "lines_out", "Messages (lines, prompts, chunks) queued for clients", stats.messages_out
        )
        yield counter("bytes_in", "Bytes received from clients", stats.bytes_in)
        yield counter("bytes_out", "Bytes written to clients", stats.bytes_out)
        yield counter("slow_consumers", "Clients dropped as slow consumers", stats.slow_consumers)
        yield counter(
            "flood_throttles", "Times a flooding client was paused", stats.flood_throttles
        )
        yield counter("idle_timeouts", "Clients closed for idleness", stats.idle_timeouts)
        yield counter(
            "handshake_failures", "Failed TLS handshakes or PROXY headers", stats.handshake_failures
        )
        yield counter(
            "probes",
            "Connections closed without a byte (load balancers' health checks)",
            stats.probes,
        )
        refused = CounterMetricFamily("gserver_refused", "Clients refused", labels=["reason"])
        refused.add_metric(["max_clients"], stats.refused_full)
        refused.add_metric(["max_clients_per_ip"], stats.refused_per_ip)
        yield refused
        yield counter("handler_errors", "Handlers that raised", stats.handler_errors)
        link = now.link
        if link is not None:
            yield gauge(
                "backplane_up",
                "1 while the Redis backplane is reachable and all its parts run",
                1 if link.up and not link.failed_parts else 0,
            )
            yield counter("backplane_events_in", "Events received from other nodes", link.events_in)
            yield counter(
                "backplane_events_out", "Events published to other nodes", link.events_out
            )
            yield counter(
                "backplane_events_dropped", "Events lost while Redis was away", link.events_dropped
            )


def make_app(
    snapshot: Callable[[], Snapshot], health: Callable[[], tuple[bool, str]]
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """WSGI app: ``/metrics`` for Prometheus, ``/healthz`` 200 or 503."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            healthy, why = health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{why}\n".encode()]
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class _BoundedWSGIServer(WSGIServer):  # type: ignore[misc]
    idle_seconds: float | None = None

    def handle(self, sock: Any, address: Any) -> None:
        sock.settimeout(self.idle_seconds)  # an idle or trickling client is closed
        super().handle(sock, address)


class MetricsPort:
    """The metrics port as a companion of the server: started and stopped with it."""

    def __init__(self, host: str, port: int, log: Any, idle_seconds: float | None) -> None:
        self.host = host
        self.port = port
        self.log = log
        self.idle_seconds = idle_seconds
        self._server: Any = None

    def start(self, server: Server) -> None:
        # With workers, worker k serves on port + k (0 stays 0: any free port each).
        port = self.port + (server.worker_index if self.port else 0)
        try:
            listener = open_listener(self.host, port, 128)
        except StartError as exc:
            raise StartError(f"metrics_port: {exc}") from None
        app = make_app(server.snapshot, server.health)
        self._server = _BoundedWSGIServer(
            listener, app, spawn=Pool(MAX_CONNECTIONS), log=None, error_log=None
        )
        self._server.idle_seconds = self.idle_seconds
        self._server.start()
        self.log.info("metrics_listening", host=self.host, port=listener.getsockname()[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
