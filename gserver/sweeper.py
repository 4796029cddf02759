"""One greenlet watches every client's idle time and write progress, instead of a timer
per read: a client's read costs nothing extra, and an idle client holds no timer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import gevent

from gserver import compat
from gserver.connection import CloseReason, Connection
from gserver.counters import Stats

TIMEOUT_NOTICE = "Timeout - closing connection\n"


def sweep_interval(idle_timeout: float, write_timeout: float) -> float:
    """Once a second, or a quarter of the shortest timeout (never more often than 20/s)."""
    limits = [t for t in (idle_timeout, write_timeout) if t > 0]
    return max(0.05, min([1.0, *(t / 4 for t in limits)]))


def sweep_forever(
    connections: Callable[[], Iterable[Connection]],
    idle_timeout: float,
    write_timeout: float,
    stats: Stats,
    timeout_notice: str | bytes | None = TIMEOUT_NOTICE,
) -> None:
    interval = sweep_interval(idle_timeout, write_timeout)
    while True:
        gevent.sleep(interval)
        now = compat.loop_now()
        for conn in list(connections()):
            if conn.writer_stalled(now, write_timeout):
                if not conn.closing:
                    stats.slow_consumers += 1
                conn.abort(CloseReason.SLOW_CONSUMER, stalled_seconds=write_timeout)
            elif (
                not conn.closing
                and idle_timeout > 0
                and now - conn.last_read >= idle_timeout
                and not conn.reading_paused
            ):
                stats.idle_timeouts += 1
                conn.log.info("idle_timeout", idle_timeout=idle_timeout)
                if timeout_notice:
                    conn.send(timeout_notice)
                conn.close(CloseReason.IDLE_TIMEOUT)
