"""Who may come in: ``max_clients`` at once and ``max_clients_per_ip`` from one address.

Decided in the accept callback, before a client costs a greenlet: a client beyond a limit
is accepted, told ``Server full`` and closed, instead of being left unanswered in the
kernel backlog as a full gevent ``Pool`` would leave it.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent

from gserver import compat
from gserver.connection import format_peer
from gserver.counters import Stats
from gserver.settings import Settings

SERVER_FULL = b"Server full, try again later\n"


def client_ip(address: Any) -> str:
    return format_peer(address).rpartition(":")[0]


# Refused clients whose last words are still on their way: each holds a descriptor for up
# to REFUSAL_LINGER_SECONDS, so past this many at once (a flood while full) they are closed
# at once instead.
MAX_LINGERING_REFUSALS = 64
REFUSAL_LINGER_SECONDS = 1.0
_lingering = 0


def refuse(sock: Any, message: bytes | None) -> None:
    """Say ``message`` (if any) to a client that is not admitted, and close it.

    Closing with the client's request unread would answer it with a reset, which can
    destroy ``message`` on its way: so, while few are waiting, the rest of what the client
    sends is read and dropped for a moment (a greenlet of its own) before the close."""
    global _lingering
    try:
        if message:
            sock.send(message)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    if _lingering >= MAX_LINGERING_REFUSALS or not hasattr(sock, "recv_into"):
        sock.close()
        return
    _lingering += 1
    gevent.spawn_raw(_linger_then_close, sock)


def _linger_then_close(sock: Any) -> None:
    global _lingering
    watcher = compat.io_watcher(sock.fileno(), compat.READ)
    try:
        with gevent.Timeout(REFUSAL_LINGER_SECONDS, False):
            while True:
                try:
                    if not sock.recv(4096):
                        break
                except BlockingIOError:
                    compat.wait_on(watcher)
    except OSError:
        pass
    finally:
        watcher.close()
        _lingering -= 1
        sock.close()


class Admission:
    """Counts clients from admission to their end, handshakes included: a burst of connects
    accepted in one loop turn, or silent TLS clients, cannot slip past the limits."""

    def __init__(
        self, settings: Settings, max_clients: int, stats: Stats, log: Any, ip_known: bool
    ) -> None:
        self.max_clients = max_clients
        self.per_ip_limit = settings.max_clients_per_ip
        # Where the real address comes later (a PROXY header, a proxy's X-Forwarded-For),
        # the per-IP limit is checked then, by the server, with over_per_ip_limit.
        self.ip_known_at_accept = ip_known
        self.stats = stats
        self.log = log
        self.admitted = 0
        self._per_ip: dict[str, int] = {}

    def admit(
        self,
        sock: Any,
        address: Any,
        stopping: bool,
        check_ip: bool = True,
        full: bytes | None = SERVER_FULL,
    ) -> bool:
        """True if this new client gets a greenlet; otherwise it has been answered (``full``:
        what a client over a limit is told, in its listener's protocol)."""
        check_ip = check_ip and self.ip_known_at_accept
        if stopping:
            reason = "stopping"
        elif self.admitted >= self.max_clients:
            self.stats.refused_full += 1
            reason = "max_clients"
        elif check_ip and self.over_per_ip_limit(address):
            self.stats.refused_per_ip += 1
            reason = "max_clients_per_ip"
        else:
            self.admitted += 1
            if check_ip:
                self.count_ip(address, +1)
            return True
        self.log.info("refused", client=format_peer(address), reason=reason)
        refuse(sock, None if reason == "stopping" else full)
        return False

    def gone(self, address: Any, ip_counted: bool) -> None:
        """An admitted client has ended (however it ended); ``ip_counted`` when admit
        counted it under its address."""
        self.admitted -= 1
        if ip_counted:
            self.count_ip(address, -1)

    def over_per_ip_limit(self, address: Any) -> bool:
        limit = self.per_ip_limit
        return bool(limit) and self._per_ip.get(client_ip(address), 0) >= limit

    def count_ip(self, address: Any, change: int) -> None:
        """Keep the per-IP counts, only where there is a per-IP limit to enforce."""
        if not self.per_ip_limit:
            return
        ip = client_ip(address)
        count = self._per_ip.get(ip, 0) + change
        if count > 0:
            self._per_ip[ip] = count
        else:
            self._per_ip.pop(ip, None)
