"""The server: listening socket, admission, one greenlet per client, and the lifecycle.

``gevent.server.StreamServer`` accepts and spawns a greenlet per connection into a gevent
``Group`` (so that shutdown can wait for them).  Admission is our own policy, decided in the
accept callback: a client beyond ``max_clients`` is accepted, told ``Server full`` and
closed, instead of being left unanswered in the kernel backlog as a full ``Pool`` would.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket
from gevent import monkey
from gevent.event import Event
from gevent.server import StreamServer

from gserver.connection import Connection, format_peer
from gserver.logs import get_logger
from gserver.protocol import proxy
from gserver.registry import Registry
from gserver.settings import Settings, SettingsError
from gserver.tls import make_context

Handler = Callable[[Connection], None]
# The standard library's own socket class, even where gevent has patched the module.
_RawSocket: Any = monkey.get_original("socket", "socket")
# Descriptors kept free of clients: the listener, standard streams, log files, and one to
# accept a client only to tell it that the server is full.
SPARE_DESCRIPTORS = 32
SERVER_FULL = b"Server full, try again later\n"
SHUTTING_DOWN = "Server shutting down\n"
ACCEPT_RETRY_SECONDS = 0.1


def _client_ip(address: Any) -> str:
    return format_peer(address).rpartition(":")[0]


class _HandshakeFailed(Exception):
    """The client did not complete the PROXY header or TLS handshake in time."""


def _read_proxy_header(sock: Any) -> proxy.ProxyHeader:
    """Peek until the whole header has arrived, then consume exactly it: the bytes after
    it (perhaps a TLS ClientHello) stay in the socket for whoever reads next."""
    while True:
        data = sock.recv(proxy.MAX_HEADER_BYTES, socket.MSG_PEEK)
        if not data:
            raise _HandshakeFailed("closed before the PROXY header")
        header = proxy.parse(data)
        if header is not None:
            remaining = header.length
            while remaining:
                remaining -= len(sock.recv(remaining))
            return header
        gevent.sleep(0.01)  # a header split across segments: peeking again at once would spin


class StartError(Exception):
    """The server cannot start (port in use, address not available...)."""


@dataclass
class Stats:
    """Counters an operator (and the tests) can read."""

    connections_total: int = 0
    refused_full: int = 0
    refused_per_ip: int = 0
    slow_consumers: int = 0
    flood_throttles: int = 0
    handshake_failures: int = 0
    lines_in: int = 0
    messages_out: int = 0
    bytes_in_closed: int = 0
    bytes_out_closed: int = 0
    idle_timeouts: int = 0
    handler_errors: int = 0


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


class _Acceptor(StreamServer):  # type: ignore[misc]
    """gevent's StreamServer, handing out plain non-blocking sockets (no gevent wrapper, so
    an idle client costs less), with gserver's admission policy before each spawn."""

    def __init__(self, listener: socket.socket, server: Server) -> None:
        super().__init__(listener, spawn=gevent.spawn_raw)
        self.gserver = server

    def do_read(self) -> tuple[Any, Any] | None:
        try:
            fd, address = self.socket._accept()
        except (BlockingIOError, ConnectionAbortedError):
            return None
        except OSError as exc:
            # Out of descriptors or memory: pause accepting briefly instead of spinning
            # (and instead of gevent printing a traceback on every retry).
            self.gserver.log.error("accept_failed", error=exc.strerror or str(exc))
            self.stop_accepting()
            self._timer = self.loop.timer(ACCEPT_RETRY_SECONDS)
            self._timer.start(self._start_accepting_if_started)
            return None
        sock = _RawSocket(self.socket.family, self.socket.type, 0, fd)
        sock.setblocking(False)
        return sock, address

    def do_close(self, sock: Any, *args: Any) -> None:
        sock.close()

    def do_handle(self, client: Any, address: Any) -> None:
        # serve_client closes the socket itself, so no close-when-done wrapper is needed.
        if self.gserver.admit(client, address):
            gevent.spawn_raw(self.gserver.serve_client, client, address)

    def handle(self, client: Any, address: Any) -> None:  # required by gevent; unused
        self.gserver.serve_client(client, address)


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
    ) -> None:
        self.handler = handler
        self.settings = settings or Settings()
        self.on_start = on_start
        self.worker_index = worker_index
        self.log = get_logger()
        if self.settings.backplane:
            from gserver.backplane import Backplane, ClusterChatRoom

            backplane = Backplane(self.settings.backplane, self.settings.backplane_prefix, self.log)
            self.registry = Registry(ClusterChatRoom(backplane), backplane)
        else:
            self.registry = Registry()
        self.stats = Stats()
        self._metrics_server: Any = None
        self.log_debug = self.settings.log_level == "debug"
        self._drained = Event()  # set whenever no client is being served
        self._drained.set()
        self.stopping = False
        self.max_clients = self.settings.max_clients
        self._live: dict[Connection, None] = {}
        self._per_ip: dict[str, int] = {}
        self._admitted = 0  # clients admitted and not yet gone, handshaking ones included
        self._pending_flush: list[Connection] = []
        self._acceptor: _Acceptor | None = None
        self._listener: socket.socket | None = None
        self._background: list[gevent.Greenlet] = []
        self._stopped = Event()
        self.tls_context: Any = None
        if self.settings.tls_cert and self.settings.tls_key:
            self.tls_context = make_context(self.settings.tls_cert, self.settings.tls_key)
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

    def start(self, listener: socket.socket | None = None) -> None:
        """Listen and start serving in the background; returns at once."""
        s = self.settings
        self.max_clients = raise_open_file_limit(s.max_clients, self.log)
        self._listener = listener or open_listener(s.host, s.port, s.backlog)
        if s.metrics_port is not None:
            self._start_metrics(s.metrics_port + (self.worker_index if s.metrics_port else 0))
        if self.registry.backplane is not None:
            self.registry.backplane.start(self.registry)
        self._acceptor = _Acceptor(self._listener, self)
        self._acceptor.start()
        self._background.append(gevent.spawn(self._sweep))
        if self.on_start is not None:
            self.on_start(self)
        host, port = self.address
        self.log.info(
            "listening",
            host=host,
            port=port,
            mode=s.handler or s.mode,
            pid=os.getpid(),
            max_clients=self.max_clients,
            idle_timeout=s.effective_idle_timeout,
        )

    def _start_metrics(self, port: int) -> None:
        from gevent.pywsgi import WSGIServer

        from gserver.metrics import make_app

        host = self.settings.host
        try:
            listener = open_listener(host, port, 128)
        except StartError as exc:
            raise StartError(f"metrics_port: {exc}") from None
        self._metrics_server = WSGIServer(listener, make_app(self), log=None, error_log=None)
        self._metrics_server.start()
        self.log.info("metrics_listening", host=host, port=listener.getsockname()[1])

    def health(self) -> tuple[bool, str]:
        """(healthy, why) for /healthz: down while stopping or when the backplane is."""
        if self.stopping:
            return False, "shutting down"
        backplane = self.registry.backplane
        if backplane is not None and not backplane.up:
            return False, "backplane down"
        return True, "ok"

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
        self.stopping = True
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
            conn.send(SHUTTING_DOWN)
            conn.close("server shutdown")
        self._flush_pending()
        self._drained.wait(timeout=grace)
        unfinished = len(self._live)
        for conn in list(self._live):
            conn.abort("server shutdown")
        if not self._drained.wait(timeout=1):
            with gevent.Timeout(1, False):
                gevent.killall([conn.greenlet for conn in self._live])
        if self.registry.backplane is not None:
            self.registry.backplane.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop(timeout=1)
        self.log.info("stopped", unfinished_at_grace_end=unfinished)

    # -- clients --------------------------------------------------------------------------

    def admit(self, client: Any, address: Any) -> bool:
        """Decide, in the accept callback, whether a new client gets a greenlet."""
        if self.stopping:
            reason = "stopping"
        # Counted from admission on, handshakes included: a burst of connects accepted in
        # one loop turn, or silent TLS clients, must not slip past the limits.
        elif self._admitted >= self.max_clients:
            self.stats.refused_full += 1
            reason = "max_clients"
        # With the PROXY protocol the real address comes later, in the header.
        elif not self.settings.proxy_protocol and self._over_per_ip_limit(address):
            self.stats.refused_per_ip += 1
            reason = "max_clients_per_ip"
        else:
            self._admitted += 1
            if not self.settings.proxy_protocol:
                self._count_ip(address, +1)
            return True
        self.log.info("refused", client=format_peer(address), reason=reason)
        try:
            if reason != "stopping":
                client.send(SERVER_FULL)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        client.close()
        return False

    def _over_per_ip_limit(self, address: Any) -> bool:
        limit = self.settings.max_clients_per_ip
        return bool(limit) and self._per_ip.get(_client_ip(address), 0) >= limit

    def _count_ip(self, address: Any, change: int) -> None:
        """Keep the per-IP counts, only where there is a per-IP limit to enforce."""
        if not self.settings.max_clients_per_ip:
            return
        ip = _client_ip(address)
        count = self._per_ip.get(ip, 0) + change
        if count > 0:
            self._per_ip[ip] = count
        else:
            self._per_ip.pop(ip, None)

    def serve_client(self, sock: Any, address: Any) -> None:
        """The greenlet of one client: set up, run the handler, clean up whatever happens."""
        try:
            self._serve_client(sock, address)
        except Exception:  # a bug of ours: logged, never a bare traceback on stderr
            self.log.exception("internal_error", client=format_peer(address))
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            self._admitted -= 1
            if not self.settings.proxy_protocol:
                self._count_ip(address, -1)

    def _serve_client(self, sock: Any, address: Any) -> None:
        if self.stopping:  # accepted just before the stop began
            sock.close()
            return
        self._tune(sock)
        if self.settings.proxy_protocol or self.tls_context is not None:
            prepared = self._handshake(sock, address)
            if prepared is None:
                return
            sock, address = prepared
            refusal = None
            if self.stopping:  # the stop began during the handshake
                refusal = SHUTTING_DOWN.encode()
            elif self.settings.proxy_protocol and self._over_per_ip_limit(address):
                self.stats.refused_per_ip += 1
                self.log.info("refused", client=format_peer(address), reason="max_clients_per_ip")
                refusal = SERVER_FULL
            if refusal is not None:
                with gevent.Timeout(self.settings.handshake_timeout or 1, False):
                    sock.sendall(refusal)
                sock.close()
                return
        if self.settings.proxy_protocol:
            self._count_ip(address, +1)
            try:
                self._serve_connection(sock, address)
            finally:
                self._count_ip(address, -1)
        else:
            self._serve_connection(sock, address)

    def _serve_connection(self, sock: Any, address: Any) -> None:
        conn = Connection(self, sock, address)
        self._live[conn] = None
        self._drained.clear()
        self.registry.add(conn)
        self.stats.connections_total += 1
        self.log.info("connect", client=conn.peer)
        try:
            self.handler(conn)
        except Exception:
            self.stats.handler_errors += 1
            conn.close_reason = conn.close_reason or "handler error"
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
        stats.bytes_in_closed += conn.bytes_in
        stats.bytes_out_closed += conn.bytes_out
        stats.messages_out += conn.messages_out
        conn.log.info(
            "disconnect",
            reason=conn.close_reason,
            duration=round(gevent.get_hub().loop.now() - conn.connected_at, 3),
            bytes_in=conn.bytes_in,
            bytes_out=conn.bytes_out,
        )

    def _handshake(self, sock: Any, address: Any) -> tuple[Any, Any] | None:
        """Read the PROXY header and do the TLS handshake, within handshake_timeout.

        A client that stays silent, sends plain text to TLS, or sends a bad header is
        logged and closed here, before it counts as connected; no one else waits on it.
        """
        timeout = self.settings.handshake_timeout or None
        family, kind = sock.family, sock.type
        # gevent's cooperative socket, for the blocking-style steps below.
        sock = gevent.socket.socket(family, kind, 0, fileno=sock.detach())
        try:
            with gevent.Timeout(timeout, _HandshakeFailed(f"no handshake within {timeout}s")):
                if self.settings.proxy_protocol:
                    header = _read_proxy_header(sock)
                    if header.source is not None:
                        address = header.source
                if self.tls_context is not None:
                    sock = self.tls_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                    sock.do_handshake()
                else:  # back to the plain socket and the fast path
                    sock = _RawSocket(family, kind, 0, sock.detach())
                    sock.setblocking(False)
        except (_HandshakeFailed, proxy.ProxyHeaderError, OSError) as exc:
            self.stats.handshake_failures += 1
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            self.log.info("handshake_failed", client=format_peer(address), error=reason)
            # Unread input would turn the close into a reset; what is here is garbage anyway.
            with contextlib.suppress(OSError):
                sock._sock.recv(proxy.MAX_HEADER_BYTES)
            sock.close()
            return None
        return sock, address

    def _tune(self, sock: Any) -> None:
        try:
            # Replies are written whole, once per loop turn: never wait for Nagle.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keepalive = self.settings.keepalive
            if keepalive > 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    idle = max(1, int(keepalive))
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, min(idle, 10))
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
        except OSError:
            pass  # the client may already be gone; the handler will find out

    @property
    def connections(self) -> list[Connection]:
        """Every client being served, including those still finishing."""
        return list(self._live)

    # -- output ---------------------------------------------------------------------------

    def schedule_flush(self, conn: Connection) -> None:
        """Write ``conn``'s outbox at the end of this loop turn (with everyone else's)."""
        if not self._pending_flush:
            gevent.get_hub().loop.run_callback(self._flush_pending)
        self._pending_flush.append(conn)

    def _flush_pending(self) -> None:
        pending, self._pending_flush = self._pending_flush, []
        for conn in pending:
            try:
                conn.flush_without_waiting()
            except Exception:  # one client's fault must not leave the others unwritten
                conn.log.exception("flush_failed")
                conn.abort("error")

    # -- timeouts -------------------------------------------------------------------------

    def _sweep(self) -> None:
        """One greenlet watches every client's idle time and write progress."""
        s = self.settings
        idle_timeout = s.effective_idle_timeout
        limits = [t for t in (idle_timeout, s.write_timeout) if t > 0]
        interval = min([1.0, *(t / 4 for t in limits)])
        interval = max(interval, 0.05)
        loop = gevent.get_hub().loop
        while True:
            gevent.sleep(interval)
            now = loop.now()
            for conn in list(self._live):
                if conn.closing:
                    if conn.writer_stalled(now, s.write_timeout):
                        conn.abort("slow consumer", stalled_seconds=s.write_timeout)
                    continue
                if conn.writer_stalled(now, s.write_timeout):
                    self.stats.slow_consumers += 1
                    conn.abort("slow consumer", stalled_seconds=s.write_timeout)
                elif (
                    idle_timeout > 0
                    and now - conn.last_read >= idle_timeout
                    and not conn.reading_paused
                ):
                    self.stats.idle_timeouts += 1
                    conn.log.info("idle_timeout", idle_timeout=idle_timeout)
                    conn.send("Timeout - closing connection\n")
                    conn.close("idle timeout")
