"""The listening socket and the accept loop.

``gevent.server.StreamServer`` watches the listening socket; gserver's acceptor hands out
plain non-blocking sockets (no gevent wrapper, so an idle client costs less) and asks the
server, in the accept callback itself, whether each new client is admitted.
"""

from __future__ import annotations

import errno
import resource
import socket
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey

from gserver import compat

# Descriptors kept free of clients: the listener, standard streams, log files, the metrics
# port, and one to accept a client only to tell it that the server is full.
SPARE_DESCRIPTORS = 32
ACCEPT_RETRY_SECONDS = 0.1


class StartError(Exception):
    """The server cannot start (port in use, address not available...)."""


def open_listener(host: str, port: int, backlog: int, unpatched: bool = False) -> socket.socket:
    """A bound, listening, non-blocking socket; ``::`` serves IPv6 and IPv4 alike.

    No SO_REUSEPORT: a second gserver on the same port must fail, not split the room.
    ``unpatched`` uses the standard library's own socket and resolver, which start no
    gevent hub: a master process must fork its workers before any hub exists.
    """
    socket_class, getaddrinfo = socket.socket, socket.getaddrinfo
    if unpatched:
        socket_class = monkey.get_original("socket", "socket")
        getaddrinfo = monkey.get_original("socket", "getaddrinfo")
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket_class(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", "::0"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartError(f"port {port} is already in use on {host}") from None
        raise StartError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def raise_open_file_limit(wanted_clients: int, log: Any) -> int:
    """Raise the soft descriptor limit to the hard one; return how many clients fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    room = soft - SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and wanted_clients > room:
        fitting = max(1, room)
        log.warning(
            "max_clients_lowered",
            max_clients=wanted_clients,
            lowered_to=fitting,
            open_file_limit=soft,
        )
        return fitting
    return wanted_clients


def tune(sock: Any, keepalive: float) -> None:
    """TCP_NODELAY (replies are written whole, once per loop turn: never wait for Nagle)
    and keepalive probes after ``keepalive`` idle seconds (0 = off)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                idle = max(1, int(keepalive))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, min(idle, 10))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except OSError:
        pass  # the client may already be gone; the handler will find out


Admit = Callable[[Any, Any], bool]
Serve = Callable[[Any, Any], None]


class Acceptor(compat.AcceptorBase):
    """Accepts clients; each admitted one is served on a raw greenlet of its own."""

    def __init__(self, listener: socket.socket, admit: Admit, serve: Serve, log: Any) -> None:
        super().__init__(listener, spawn=gevent.spawn_raw)
        self._admit = admit
        self._serve = serve
        self._log = log

    def do_read(self) -> tuple[Any, Any] | None:
        try:
            return self.accept_raw()
        except OSError as exc:
            # Out of descriptors or memory: pause accepting briefly instead of spinning
            # (and instead of gevent printing a traceback on every retry).
            self._log.error("accept_failed", error=exc.strerror or str(exc))
            self.pause_accepting(ACCEPT_RETRY_SECONDS)
            return None

    def do_close(self, sock: Any, *args: Any) -> None:
        sock.close()

    def do_handle(self, client: Any, address: Any) -> None:
        # The serving greenlet closes the socket itself: no close-when-done wrapper needed.
        if self._admit(client, address):
            gevent.spawn_raw(self._serve, client, address)

    def handle(self, client: Any, address: Any) -> None:  # required by gevent; unused
        self._serve(client, address)
