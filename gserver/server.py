"""The server's lifecycle: start, serve each client in a greenlet of its own, stop
gracefully on a signal.

The parts it runs have modules of their own: the listener and accept loop
(``listener.py``), admission (``admission.py``), the PROXY/TLS handshake
(``handshake.py``), the idle sweeper (``sweeper.py``), the counters (``counters.py``).
A cluster link and companions such as the metrics port are handed in by whoever composes
the server (``cli.py``); the server starts and stops them, and knows nothing else of them.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent
from gevent.event import Event

from gserver import compat
from gserver.admission import Admission
from gserver.connection import (
    CloseReason,
    Connection,
    ConnectionContext,
    send_to_all,
)
from gserver.counters import Snapshot, Stats, add_traffic
from gserver.listener import Acceptor, StartError, open_listener, raise_open_file_limit, tune
from gserver.logs import get_logger
from gserver.registry import ChatRoom, ClusterLink, Registry
from gserver.serving import OPTIONS_INHERITED, SHUTTING_DOWN, Clients, Front, Handler
from gserver.settings import IDLE_TIMEOUT_FOR_HANDLERS, Settings, SettingsError
from gserver.sweeper import TIMEOUT_NOTICE, sweep_forever
from gserver.tls import make_context

# After the grace period, how long aborted clients get to unwind, and then how long
# handlers that were killed get, before the server stops without them.
UNWIND_SECONDS = 0.25
__all__ = ["Companion", "Front", "Handler", "Server", "StartError", "Stats"]


class Companion(Protocol):
    """Something that lives as long as the server (the metrics port, say)."""

    def start(self, server: Server) -> None: ...

    def stop(self) -> None: ...


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
        self.clients = Clients(handler, s, self.context, self.registry, self.stats, self.log, front)
        self.stopping = False
        self._stopped = Event()
        self._acceptor: Acceptor | None = None
        self._listener: socket.socket | None = None
        self._background: list[gevent.Greenlet] = []
        self.tls_context: Any = None
        if s.tls_cert and s.tls_key:
            self.tls_context = make_context(s.tls_cert, s.tls_key)
        self.clients.tls_context = self.tls_context
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
        admission = self.clients.admission
        return admission.max_clients if admission else self.settings.max_clients

    def start(self, listener: socket.socket | None = None) -> None:
        """Listen and start serving in the background; returns at once."""
        s = self.settings
        max_clients = raise_open_file_limit(s.max_clients, self.log)
        # The per-IP count waits for the real address where it comes later: in a PROXY
        # header, or from a proxy's X-Forwarded-For when web clients share the port.
        ip_known = not s.proxy_protocol and self.front is None
        self.clients.admission = Admission(s, max_clients, self.stats, self.log, ip_known)
        self._listener = listener or open_listener(s.host, s.port, s.backlog)
        if OPTIONS_INHERITED:
            tune(self._listener, s.keepalive)
        for companion in self.companions:
            companion.start(self)
        if self.registry.link is not None:
            self.registry.link.start(self.registry)
        clients = self.clients
        self._acceptor = Acceptor(self._listener, clients.admit, clients.serve_accepted, self.log)
        self._acceptor.start()
        self.spawn_background(
            sweep_forever,
            self.clients.connections,
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
            self.tls_context = self.clients.tls_context = make_context(s.tls_cert, s.tls_key)
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
        self.log.warning("exit_now", signal=why, clients=len(self.clients.live))
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
        self.log.info("shutting_down", signal=why, clients=len(self.clients.live), grace=grace)
        if self._acceptor is not None:
            self._acceptor.close()
        for greenlet in self._background:
            greenlet.kill(block=False)
        for conn in list(self.clients.live):
            if self.shutdown_notice:
                conn.send(self.shutdown_notice)
            conn.close(CloseReason.SHUTDOWN)
        self.context.flush_queue.flush()
        self.clients.drained.wait(timeout=grace)
        unfinished = len(self.clients.live)
        for conn in list(self.clients.live):
            conn.abort(CloseReason.SHUTDOWN)
        if not self.clients.drained.wait(timeout=UNWIND_SECONDS):
            # Handlers still running past their sockets' end: kill them, and do not wait
            # for one that catches the kill and goes on.
            for conn in list(self.clients.live):
                compat.kill_soon(conn.greenlet)
            self.clients.drained.wait(timeout=UNWIND_SECONDS)
        for stop in self._parts_to_stop():
            try:
                stop()
            except Exception:  # a part that fails to stop must not keep the others running
                self.log.exception("stop_failed", part=getattr(stop, "__qualname__", "?"))
        self.log.info(
            "stopped", unfinished_at_grace_end=unfinished, still_running=len(self.clients.live)
        )

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
        live = list(self.clients.live)
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

    @property
    def connections(self) -> list[Connection]:
        """Every client being served, including those still finishing."""
        return self.clients.connections()
