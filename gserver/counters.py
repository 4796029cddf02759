"""What an operator (and the tests) can count: plain integers on the hot path, read as a
snapshot only when someone asks (a Prometheus scrape, a test)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gserver.registry import LinkState


@dataclass
class Stats:
    """Counters of one server process; each event costs one integer increment."""

    connections_total: int = 0
    refused_full: int = 0
    refused_per_ip: int = 0
    slow_consumers: int = 0
    flood_throttles: int = 0
    handshake_failures: int = 0
    probes: int = 0  # connected and went without a byte: load balancers' health checks
    lines_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    idle_timeouts: int = 0
    handler_errors: int = 0
    # Connections by transport other than plain TCP (websocket), for the metrics' label.
    connections_by_transport: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment, live connections' traffic included."""

    stats: Stats
    connected: int
    accepting: bool
    link: LinkState | None = None


def add_traffic(stats: Stats, bytes_in: int, bytes_out: int, messages_out: int) -> Stats:
    """A copy of ``stats`` with the traffic of connections still open added in."""
    return dataclasses.replace(
        stats,
        bytes_in=stats.bytes_in + bytes_in,
        bytes_out=stats.bytes_out + bytes_out,
        messages_out=stats.messages_out + messages_out,
    )
