"""One client's way through the server, from accept to disconnect: the PROXY header and
TLS handshake, telling a browser from a TCP client on a shared port, admission under the
client's real address, the handler, and the disconnect.

:class:`Clients` holds every client being served; the server (``server.py``) owns it and
keeps to the lifecycle.  A :class:`Front` is another kind of client on the same listener
(the web port, when it is the port).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent.event import Event

from gserver import compat
from gserver.admission import SERVER_FULL, Admission, refuse
from gserver.connection import RECV_SIZE, CloseReason, Connection, ConnectionContext, format_peer
from gserver.counters import Stats
from gserver.handshake import prepare
from gserver.listener import tune
from gserver.registry import Registry
from gserver.settings import Settings

Handler = Callable[[Connection], None]
SHUTTING_DOWN = "Server shutting down\n"
# Linux gives every accepted socket the listener's TCP_NODELAY and keepalive options:
# there they are set once on the listener, not with five system calls per client.
OPTIONS_INHERITED = sys.platform.startswith("linux")


class Front(Protocol):
    """Another kind of client served on the server's own listener (web clients when the
    web port is the port), told apart by the first bytes each client sends."""

    def claims(self, first: bytes) -> bool: ...

    def serve(self, clients: Clients, sock: Any, address: Any, first: bytes) -> None:
        """Serve this client to its end (``first``: what was read of it already)."""


def sniff(sock: Any, timeout: float) -> bytes:
    """The first bytes a new client sends within ``timeout`` seconds; b"" when it sends
    nothing (or closes) by then."""
    if compat.is_ssl_socket(sock):
        sock.settimeout(timeout)
        try:
            return bytes(sock.recv(RECV_SIZE))
        except OSError:  # the timeout, or a broken client that the handler will meet
            return b""
        finally:
            sock.settimeout(None)
    try:
        return bytes(sock.recv(RECV_SIZE))
    except BlockingIOError:
        pass
    except OSError:
        return b""
    watcher = compat.io_watcher(sock.fileno(), compat.READ)
    try:
        with gevent.Timeout(timeout, False):
            compat.wait_on(watcher)
    finally:
        watcher.close()
    try:
        return bytes(sock.recv(RECV_SIZE))
    except OSError:
        return b""


class Clients:
    """Every client being served, and the way each one is served."""

    def __init__(
        self,
        handler: Handler,
        settings: Settings,
        context: ConnectionContext,
        registry: Registry,
        stats: Stats,
        log: Any,
        front: Front | None,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.context = context
        self.registry = registry
        self.stats = stats
        self.log = log
        self.front = front
        self.live: dict[Connection, None] = {}
        self.drained = Event()  # set whenever no client is being served
        self.drained.set()
        self.admission: Admission | None = None  # made at start, when max_clients is known
        self.tls_context: Any = None  # replaced on SIGHUP

    def connections(self) -> list[Connection]:
        """Every client being served, including those still finishing."""
        return list(self.live)

    def admit(self, sock: Any, address: Any) -> bool:
        assert self.admission is not None
        return self.admission.admit(sock, address, self.context.stopping)

    def admit_unchecked(self, sock: Any, address: Any, full: bytes | None = SERVER_FULL) -> bool:
        """Admission without the per-IP check, for listeners whose clients' real address is
        known only later (a web client behind a proxy): see :meth:`admit_address`.  ``full``
        is what a client is told when the server is full (the web port: an HTTP 503)."""
        assert self.admission is not None
        return self.admission.admit(sock, address, self.context.stopping, check_ip=False, full=full)

    def admit_address(self, address: Any) -> bool:
        """Count a client under its real address, once known; False when that address is
        over ``max_clients_per_ip`` (then refuse it, and do not call release_address)."""
        assert self.admission is not None
        if self.admission.over_per_ip_limit(address):
            self.stats.refused_per_ip += 1
            self.log.info("refused", client=format_peer(address), reason="max_clients_per_ip")
            return False
        self.admission.count_ip(address, +1)
        return True

    def release_address(self, address: Any) -> None:
        assert self.admission is not None
        self.admission.count_ip(address, -1)

    def serve_accepted(self, sock: Any, address: Any, front: Front | None = None) -> None:
        """The greenlet of one client: set up, run the handler, clean up whatever happens.

        ``front`` serves clients of a listener of its own (the web port); otherwise the
        server's own front, if any, is asked about each client by its first bytes."""
        assert self.admission is not None
        try:
            self._prepare_and_serve(sock, address, front)
        except Exception:  # a bug of ours: logged, never a bare traceback on stderr
            self.log.exception("internal_error", client=format_peer(address))
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            self.admission.gone(address, front is None and self.admission.ip_known_at_accept)

    def _prepare_and_serve(self, sock: Any, address: Any, front: Front | None) -> None:
        s = self.settings
        if self.context.stopping:  # accepted just before the stop began
            sock.close()
            return
        if front is not None or not OPTIONS_INHERITED:  # a listener of the front's own
            tune(sock, s.keepalive)
        if s.proxy_protocol or self.tls_context is not None:
            prepared = prepare(
                sock,
                address,
                proxy_protocol=s.proxy_protocol,
                tls_context=self.tls_context,
                timeout=s.handshake_timeout or None,
                stats=self.stats,
                log=self.log,
            )
            if prepared is None:
                return
            sock, address = prepared.sock, prepared.address
            if self.context.stopping:  # the stop began during the handshake
                with gevent.Timeout(s.handshake_timeout or 1, False):
                    sock.sendall(SHUTTING_DOWN.encode())
                refuse(sock, None)
                return
        if front is not None:
            front.serve(self, sock, address, b"")
            return
        first = b""
        if self.front is not None:
            first = sniff(sock, s.sniff_timeout)
            if first and self.front.claims(first):
                # Handed over, not also held here: a browser's request need not live as
                # long as its WebSocket.
                sniffed = [first]
                del first
                self.front.serve(self, sock, address, sniffed.pop())
                return
        assert self.admission is not None
        if self.admission.ip_known_at_accept:
            self.serve_connection(Connection(self.context, sock, address, first))
        elif self.admit_address(address):
            try:
                self.serve_connection(Connection(self.context, sock, address, first))
            finally:
                self.release_address(address)
        else:
            with gevent.Timeout(s.handshake_timeout or 1, False):
                sock.sendall(SERVER_FULL)
            refuse(sock, None)

    def serve_connection(self, conn: Connection) -> None:
        """Run the handler for one client, then deliver its last output and let it go."""
        self.live[conn] = None
        self.drained.clear()
        self.registry.add(conn)
        self.stats.connections_total += 1
        if conn.transport != "tcp":
            self.stats.connections_by_transport[conn.transport] = (
                self.stats.connections_by_transport.get(conn.transport, 0) + 1
            )
        self.log.info("connect", client=conn.peer, transport=conn.transport)
        try:
            self.handler(conn)
        except Exception:
            self.stats.handler_errors += 1
            conn.close_reason = conn.close_reason or CloseReason.HANDLER_ERROR
            conn.log.exception("handler_error")
        finally:
            self.registry.remove(conn)
            try:
                conn.finish()
            finally:
                self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        """The client is gone: count it out, keep its totals, log its disconnect."""
        del self.live[conn]
        if not self.live:
            self.drained.set()
        stats = self.stats
        stats.bytes_in += conn.bytes_in
        stats.bytes_out += conn.bytes_out
        stats.messages_out += conn.messages_out
        # conn.log.info(...), without binding a logger for one line where the client has
        # none of its own: the same fields, in the same order.
        log, context = conn._log, {}
        if log is None:
            log, context = self.log, {"client": conn.peer}
        log.info(
            "disconnect",
            **context,
            reason=str(conn.close_reason),
            transport=conn.transport,
            duration=round(compat.loop_now() - conn.connected_at, 3),
            bytes_in=conn.bytes_in,
            bytes_out=conn.bytes_out,
        )
