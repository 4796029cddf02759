"""Every use of gevent's and greenlet's private or semi-private parts, in one place.

gserver's hot paths skip gevent's socket wrapper (an idle client costs less without it)
and park greenlets on the event loop's watchers directly.  That reaches below gevent's
documented API, so it is gathered here, where an upgrade of gevent has one file to check.
Tested with gevent 24.2 to 26.9 and greenlet 3.x; outside that range gserver warns at
import and names the version (and pyproject.toml caps gevent below the next major).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent import monkey
from gevent.server import StreamServer
from greenlet import getcurrent

TESTED_GEVENT = ((24, 2), (26, 9))


def _version_tuple(text: str) -> tuple[int, int]:
    parts = [int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:2]]
    return parts[0], parts[1] if len(parts) > 1 else 0


def gevent_is_tested(version: str) -> bool:
    """True when ``version`` of gevent lies within the versions gserver is tested with."""
    low, high = TESTED_GEVENT
    major_minor = _version_tuple(version)
    return low <= major_minor and major_minor[0] <= high[0]


if not gevent_is_tested(gevent.__version__):
    warnings.warn(
        f"gserver is tested with gevent {TESTED_GEVENT[0][0]}.{TESTED_GEVENT[0][1]} to "
        f"{TESTED_GEVENT[1][0]}.x, not gevent {gevent.__version__}: its private parts "
        "(gserver/compat.py) may have changed",
        RuntimeWarning,
        stacklevel=2,
    )

# The standard library's own socket class, even where gevent has patched the module.
RawSocket: Any = monkey.get_original("socket", "socket")
READ, WRITE = 1, 2


def loop_now() -> float:
    """The event loop's cached time (one loop turn's "now": no system call)."""
    return float(gevent.get_hub().loop.now())


def run_this_turn(callback: Callable[[], None]) -> None:
    """Run ``callback`` at the end of this loop turn, before the loop sleeps."""
    gevent.get_hub().loop.run_callback(callback)


def io_watcher(fd: int, events: int) -> Any:
    """A watcher on a descriptor (READ or WRITE) for :func:`wait_on`."""
    return gevent.get_hub().loop.io(fd, events)


def wait_on(watcher: Any) -> None:
    """Park this greenlet until ``watcher`` fires (or an exception is thrown into it)."""
    hub = gevent.get_hub()
    watcher.start(getcurrent().switch)
    try:
        hub.switch()
    finally:
        watcher.stop()


def cancel_wait(watcher: Any, error: BaseException) -> None:
    """Throw ``error`` into whoever is parked on ``watcher`` (nothing if no one is)."""
    gevent.get_hub().cancel_wait(watcher, error)


def close_after_waking(
    watchers: Iterable[Any], error: BaseException, close: Callable[[], None]
) -> None:
    """Wake everyone parked on ``watchers`` with ``error``, then call ``close``."""
    gevent.get_hub().cancel_waits_close_and_then(list(watchers), error, close)


def is_ssl_socket(sock: Any) -> bool:
    """True for gevent's cooperative SSL socket (which has its own watchers)."""
    return hasattr(sock, "_sslobj")


def read_watcher_of(sock: Any) -> Any:
    """The read watcher that gevent's own (SSL) socket parks on."""
    return sock._read_event


def underlying_socket(sock: Any) -> Any:
    """The standard library socket inside one of gevent's socket objects."""
    return getattr(sock, "_sock", sock)


def send_tls_close_notify(sock: Any) -> None:
    """Send TLS's close_notify on gevent's SSL socket, without waiting for the peer's, so
    that the client sees a clean end of the TLS stream rather than a truncation.  Best
    effort: a socket that will not take even that (a slow consumer) is closed regardless."""
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None:
        return
    # The first SSL_shutdown writes close_notify; the wait for the peer's that follows
    # surfaces as a "want read" on this non-blocking socket, and is not needed.
    with contextlib.suppress(OSError, ValueError):
        sslobj.shutdown()


def kill_soon(greenlet: Any, error: type[BaseException] = gevent.GreenletExit) -> None:
    """Throw ``error`` into ``greenlet`` (raw or not) at the next loop turn, without
    waiting for it: a handler that catches it and goes on must not hold anyone up."""
    if not greenlet.dead:
        gevent.kill(greenlet, error)


class AcceptorBase(StreamServer):  # type: ignore[misc]
    """gevent's StreamServer without its socket wrapper: ``accept_raw`` hands out the
    standard library's non-blocking sockets; ``pause_accepting`` backs off on EMFILE
    instead of gevent's traceback on every retry."""

    def accept_raw(self) -> tuple[Any, Any] | None:
        """A new client (socket, address), or None when none is waiting."""
        try:
            fd, address = self.socket._accept()
        except (BlockingIOError, ConnectionAbortedError):
            return None
        sock = RawSocket(self.socket.family, self.socket.type, 0, fd)
        sock.setblocking(False)
        return sock, address

    def pause_accepting(self, seconds: float) -> None:
        self.stop_accepting()
        self._timer = self.loop.timer(seconds)
        self._timer.start(self._start_accepting_if_started)
