"""The server's lifecycle: start, serve each client in a greenlet of its own, stop
gracefully on a signal.

The parts it runs have modules of their own: the listener and accept loop
(``listener.py``), admission (``admission.py``), the PROXY/TLS handshake
(``handshake.py``), the idle sweeper (``sweeper.py``), the counters (``counters.py``).
A cluster link and companions such as the metrics port are handed in by whoever composes
the server (``cli.py``); the server starts and stops them, and knows nothing else of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent
from gevent.event import Event

from gserver import compat
from gserver.admission import SERVER_FULL, Admission, refuse
from gserver.connection import (
    RECV_SIZE,
    CloseReason,
    Connection,
    ConnectionContext,
    format_peer,
    send_to_all,
)
from gserver.counters import Snapshot, Stats, add_traffic
from gserver.handshake import prepare
from gserver.listener import Acceptor, StartError, open_listener, raise_open_file_limit, tune
from gserver.logs import get_logger
from gserver.registry import ChatRoom, ClusterLink, Registry
from gserver.settings import IDLE_TIMEOUT_FOR_HANDLERS, Settings, SettingsError
from gserver.sweeper import TIMEOUT_NOTICE, sweep_forever
from gserver.tls import make_context

Handler = Callable[[Connection], None]
SHUTTING_DOWN = "Server shutting down\n"
# After the grace period, how long aborted clients get to unwind, and then how long
# handlers that were killed get, before the server stops without them.
UNWIND_SECONDS = 0.25
# Linux gives every accepted socket the listener's TCP_NODELAY and keepalive options:
# there they are set once on the listener, not with five system calls per client.
OPTIONS_INHERITED = sys.platform.startswith("linux")

__all__ = ["Companion", "Front", "Handler", "Server", "StartError", "Stats"]


class Companion(Protocol):
    """Something that lives as long as the server (the metrics port, say)."""

    def start(self, server: Server) -> None: ...

    def stop(self) -> None: ...


class Front(Protocol):
    """Another kind of client served on the server's own listener (web clients when the
    web port is the port), told apart by the first bytes each client sends."""

    def claims(self, first: bytes) -> bool: ...

    def serve(self, server: Server, sock: Any, address: Any, first: bytes) -> None:
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


class Server:
    """A TCP server that runs ``handler(connection)`` in its own greenlet per client.

    >>> Server(my_handler, Settings(port=9000)).serve_forever()
    """

    def __init__(
        self,
        handler: Handler,
        settings: Settings | None = None,
        on_start: Callable[[Server], None] | None = None,
        worker_index: int = 0,
        link: ClusterLink | None = None,
        companions: Sequence[Companion] = (),
        log: Any = None,
        front: Front | None = None,
    ) -> None:
        self.handler = handler
        self.settings = s = settings or Settings()
        self.on_start = on_start
        self.worker_index = worker_index
        self.companions = list(companions)
        self.front = front
        self.log = log if log is not None else get_logger()
        chat = ChatRoom(send_to_all, link, s.default_room, s.max_rooms, s.history_lines)
        self.registry = Registry(send_to_all, link, chat)
        self.stats = Stats()
        # The handler's own default when none is set: a built-in mode's function carries
        # its mode's (chat: 600 s); any other handler gets the handlers' default.
        self.idle_timeout = (
            s.idle_timeout
            if s.idle_timeout is not None
            else getattr(handler, "default_idle_timeout", IDLE_TIMEOUT_FOR_HANDLERS)
        )
        # What a client is told as the server stops; a handler speaking a protocol of its
        # own may say it its own way (bytes or text), or not at all (None).
        self.shutdown_notice: str | bytes | None = getattr(
            handler, "shutdown_notice", SHUTTING_DOWN
        )
        self.context = ConnectionContext(s, self.registry, self.stats, self.log)
        self.stopping = False
        self._live: dict[Connection, None] = {}
        self._drained = Event()  # set whenever no client is being served
        self._drained.set()
        self._stopped = Event()
        self._admission: Admission | None = None
        self._acceptor: Acceptor | None = None
        self._listener: socket.socket | None = None
        self._background: list[gevent.Greenlet] = []
        self.tls_context: Any = None
        if s.tls_cert and s.tls_key:
            self.tls_context = make_context(s.tls_cert, s.tls_key)
        self._interrupts = 0
        self._signal_watchers: list[Any] = []

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on; the port is real even when 0 was asked."""
        if self._listener is None:
            raise RuntimeError("the server has not started")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def max_clients(self) -> int:
        return self._admission.max_clients if self._admission else self.settings.max_clients

    def start(self, listener: socket.socket | None = None) -> None:
        """Listen and start serving in the background; returns at once."""
        s = self.settings
        max_clients = raise_open_file_limit(s.max_clients, self.log)
        # The per-IP count waits for the real address where it comes later: in a PROXY
        # header, or from a proxy's X-Forwarded-For when web clients share the port.
        ip_known = not s.proxy_protocol and self.front is None
        self._admission = Admission(s, max_clients, self.stats, self.log, ip_known)
        self._listener = listener or open_listener(s.host, s.port, s.backlog)
        if OPTIONS_INHERITED:
            tune(self._listener, s.keepalive)
        for companion in self.companions:
            companion.start(self)
        if self.registry.link is not None:
            self.registry.link.start(self.registry)
        self._acceptor = Acceptor(self._listener, self._admit, self.serve_accepted, self.log)
        self._acceptor.start()
        self.spawn_background(
            sweep_forever,
            self.connections_now,
            self.idle_timeout,
            s.write_timeout,
            self.stats,
            getattr(self.handler, "timeout_notice", TIMEOUT_NOTICE),
        )
        if self.on_start is not None:
            self.on_start(self)
        host, port = self.address
        self.log.info(
            "listening",
            host=host,
            port=port,
            mode=s.handler or s.mode,
            pid=os.getpid(),
            max_clients=max_clients,
            idle_timeout=self.idle_timeout,
            tls=self.tls_context is not None,
            proxy_protocol=s.proxy_protocol,
        )

    def spawn_background(self, function: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """Run ``function`` in a greenlet that lives as long as the server."""
        greenlet = gevent.spawn(function, *args)
        self._background.append(greenlet)
        return greenlet

    def serve_forever(self) -> int:
        """Start, serve until SIGTERM or SIGINT, stop gracefully; return the exit status."""
        if self._acceptor is None:
            self.start()
        self.install_signal_handlers()
        self._stopped.wait()
        return 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second SIGINT or a SIGQUIT exits at once."""
        if self._signal_watchers:
            return
        self._signal_watchers = [
            gevent.signal_handler(signal.SIGTERM, self._on_terminate),
            gevent.signal_handler(signal.SIGINT, self._on_interrupt),
            gevent.signal_handler(signal.SIGQUIT, self._exit_now, "SIGQUIT"),
            gevent.signal_handler(signal.SIGHUP, self.reload_tls),
        ]

    def reload_tls(self) -> None:
        """Load the certificate and key again (SIGHUP); clients already connected stay."""
        s = self.settings
        if not (s.tls_cert and s.tls_key):
            self.log.info("sighup_ignored", reason="TLS is not configured")
            return
        try:
            self.tls_context = make_context(s.tls_cert, s.tls_key)
        except SettingsError as exc:
            self.log.error("tls_reload_failed", error=str(exc))
        else:
            self.log.info("tls_reloaded", tls_cert=s.tls_cert)

    def _on_terminate(self) -> None:
        # Process managers signal whole groups, so a repeated SIGTERM must change nothing.
        if not self.stopping:
            gevent.spawn(self.stop, "SIGTERM")

    def _on_interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            self._exit_now("second SIGINT")
        elif not self.stopping:
            gevent.spawn(self.stop, "SIGINT")

    def _exit_now(self, why: str) -> None:
        self.log.warning("exit_now", signal=why, clients=len(self._live))
        os._exit(1)

    def stop(self, why: str = "stop") -> None:
        """Graceful stop: no new clients, tell everyone, let output flush, close all."""
        if self.stopping:
            self._stopped.wait()
            return
        self.stopping = self.context.stopping = True
        try:
            self._stop_gracefully(why)
        finally:
            self._stopped.set()

    def _stop_gracefully(self, why: str) -> None:
        grace = self.settings.shutdown_grace
        self.log.info("shutting_down", signal=why, clients=len(self._live), grace=grace)
        if self._acceptor is not None:
            self._acceptor.close()
        for greenlet in self._background:
            greenlet.kill(block=False)
        for conn in list(self._live):
            if self.shutdown_notice:
                conn.send(self.shutdown_notice)
            conn.close(CloseReason.SHUTDOWN)
        self.context.flush_queue.flush()
        self._drained.wait(timeout=grace)
        unfinished = len(self._live)
        for conn in list(self._live):
            conn.abort(CloseReason.SHUTDOWN)
        if not self._drained.wait(timeout=UNWIND_SECONDS):
            # Handlers still running past their sockets' end: kill them, and do not wait
            # for one that catches the kill and goes on.
            for conn in list(self._live):
                compat.kill_soon(conn.greenlet)
            self._drained.wait(timeout=UNWIND_SECONDS)
        for stop in self._parts_to_stop():
            try:
                stop()
            except Exception:  # a part that fails to stop must not keep the others running
                self.log.exception("stop_failed", part=getattr(stop, "__qualname__", "?"))
        self.log.info("stopped", unfinished_at_grace_end=unfinished, still_running=len(self._live))

    def _parts_to_stop(self) -> list[Callable[[], None]]:
        parts = [companion.stop for companion in self.companions]
        if self.registry.link is not None:
            parts.append(self.registry.link.stop)
        return parts

    def health(self) -> tuple[bool, str]:
        """(healthy, why) for /healthz: down while stopping or while the cluster link is."""
        if self.stopping:
            return False, "shutting down"
        if self.registry.link is not None:
            state = self.registry.link.state()
            if not state.up:
                return False, "backplane down"
            if state.failed_parts:
                return False, f"backplane {', '.join(state.failed_parts)} restarting"
        return True, "ok"

    def snapshot(self) -> Snapshot:
        """The counters now, with the traffic of clients still connected."""
        live = list(self._live)
        stats = add_traffic(
            self.stats,
            sum(c.bytes_in for c in live),
            sum(c.bytes_out for c in live),
            sum(c.messages_out for c in live),
        )
        link = self.registry.link
        return Snapshot(
            stats=stats,
            connected=len(live),
            accepting=not self.stopping,
            link=link.state() if link is not None else None,
        )

    # -- clients --------------------------------------------------------------------------

    @property
    def connections(self) -> list[Connection]:
        """Every client being served, including those still finishing."""
        return list(self._live)

    def connections_now(self) -> list[Connection]:
        return list(self._live)

    def _admit(self, sock: Any, address: Any) -> bool:
        assert self._admission is not None
        return self._admission.admit(sock, address, self.stopping)

    def admit_unchecked(self, sock: Any, address: Any, full: bytes | None = SERVER_FULL) -> bool:
        """Admission without the per-IP check, for listeners whose clients' real address is
        known only later (a web client behind a proxy): see :meth:`admit_address`.  ``full``
        is what a client is told when the server is full (the web port: an HTTP 503)."""
        assert self._admission is not None
        return self._admission.admit(sock, address, self.stopping, check_ip=False, full=full)

    def admit_address(self, address: Any) -> bool:
        """Count a client under its real address, once known; False when that address is
        over ``max_clients_per_ip`` (then refuse it, and do not call release_address)."""
        assert self._admission is not None
        if self._admission.over_per_ip_limit(address):
            self.stats.refused_per_ip += 1
            self.log.info("refused", client=format_peer(address), reason="max_clients_per_ip")
            return False
        self._admission.count_ip(address, +1)
        return True

    def release_address(self, address: Any) -> None:
        assert self._admission is not None
        self._admission.count_ip(address, -1)

    def serve_accepted(self, sock: Any, address: Any, front: Front | None = None) -> None:
        """The greenlet of one client: set up, run the handler, clean up whatever happens.

        ``front`` serves clients of a listener of its own (the web port); otherwise the
        server's own front, if any, is asked about each client by its first bytes."""
        assert self._admission is not None
        try:
            self._prepare_and_serve(sock, address, front)
        except Exception:  # a bug of ours: logged, never a bare traceback on stderr
            self.log.exception("internal_error", client=format_peer(address))
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            self._admission.gone(address, front is None and self._admission.ip_known_at_accept)

    def _prepare_and_serve(self, sock: Any, address: Any, front: Front | None) -> None:
        s = self.settings
        if self.stopping:  # accepted just before the stop began
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
            if self.stopping:  # the stop began during the handshake
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
        assert self._admission is not None
        if self._admission.ip_known_at_accept:
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
        self._live[conn] = None
        self._drained.clear()
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
        del self._live[conn]
        if not self._live:
            self._drained.set()
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
