"""Prometheus metrics and a health check, served from the server's own gevent loop.

The counters live in plain integers on the server (``Stats``) and are read only when
Prometheus scrapes, so the hot path pays one integer increment per event and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gserver.server import Server

StartResponse = Callable[..., Any]


class ServerCollector:
    """Reads one server's counters at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def describe(self) -> list[Metric]:
        return []  # metrics are known only at collect time; skip registration-time checks

    def collect(self) -> Iterator[Metric]:
        server, stats = self.server, self.server.stats
        live = server.connections

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"gserver_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"gserver_{name}", doc, value=value)

        yield gauge("connected_clients", "Clients connected to this process", len(live))
        yield gauge(
            "accepting",
            "1 while accepting new clients, 0 while shutting down",
            0 if server.stopping else 1,
        )
        yield counter("connections", "Clients accepted since start", stats.connections_total)
        yield counter("lines_in", "Lines received from clients", stats.lines_in)
        yield counter(
            "lines_out",
            "Messages (lines, prompts, chunks) queued for clients",
            stats.messages_out + sum(c.messages_out for c in live),
        )
        yield counter(
            "bytes_in",
            "Bytes received from clients",
            stats.bytes_in_closed + sum(c.bytes_in for c in live),
        )
        yield counter(
            "bytes_out",
            "Bytes written to clients",
            stats.bytes_out_closed + sum(c.bytes_out for c in live),
        )
        yield counter("slow_consumers", "Clients dropped as slow consumers", stats.slow_consumers)
        yield counter(
            "flood_throttles", "Times a flooding client was paused", stats.flood_throttles
        )
        yield counter("idle_timeouts", "Clients closed for idleness", stats.idle_timeouts)
        yield counter(
            "handshake_failures", "Failed TLS handshakes or PROXY headers", stats.handshake_failures
        )
        refused = CounterMetricFamily("gserver_refused", "Clients refused", labels=["reason"])
        refused.add_metric(["max_clients"], stats.refused_full)
        refused.add_metric(["max_clients_per_ip"], stats.refused_per_ip)
        yield refused
        yield counter("handler_errors", "Handlers that raised", stats.handler_errors)
        backplane = server.registry.backplane
        if backplane is not None:
            yield gauge(
                "backplane_up", "1 while the Redis backplane is reachable", 1 if backplane.up else 0
            )
            yield counter(
                "backplane_events_in", "Events received from other nodes", backplane.events_in
            )
            yield counter(
                "backplane_events_out", "Events published to other nodes", backplane.events_out
            )
            yield counter(
                "backplane_events_dropped",
                "Events lost while Redis was away",
                backplane.events_dropped,
            )


def make_app(server: Server) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """WSGI app: ``/metrics`` for Prometheus, ``/healthz`` 200 or 503."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            healthy, why = server.health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{why}\n".encode()]
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app
