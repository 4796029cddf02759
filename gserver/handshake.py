"""Before a client is served: the PROXY protocol header and the TLS handshake, bounded by
``handshake_timeout``, on gevent's cooperative socket.

A client that stays silent, sends plain text to TLS, or sends a bad header is logged and
closed here, before it counts as connected; no one else waits on it.  A load balancer's
health check (connect, then close or reset without a byte) is no failure: it is counted
as a probe and logged at debug level only.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket

from gserver import compat
from gserver.connection import format_peer
from gserver.counters import Stats
from gserver.protocol import proxy


class HandshakeFailed(Exception):
    """The client did not complete the PROXY header or TLS handshake."""


class _Probe(Exception):
    """The client went without sending a byte (a load balancer's health check)."""


@dataclass(frozen=True)
class Prepared:
    """A client ready to be served: its socket (plain or TLS) and its real address."""

    sock: Any
    address: Any


def read_proxy_header(sock: Any) -> proxy.ProxyHeader:
    """Consume exactly the PROXY header; the bytes after it (perhaps a TLS ClientHello)
    stay in the socket for whoever reads next.

    Bytes known to belong to the header are taken out of the socket as they arrive, so
    that waiting for the rest is a wait for new bytes, not a poll of old ones.
    """
    got = b""
    while True:
        try:
            peeked = sock.recv(proxy.MAX_HEADER_BYTES, socket.MSG_PEEK)
        except ConnectionError:
            peeked = b""
        if not peeked:
            if not got:
                raise _Probe
            raise HandshakeFailed("closed before the end of the PROXY header")
        header = proxy.parse(got + peeked)
        if header is None:  # all of it is header: take it, and wait for more
            got += sock.recv(len(peeked))
            continue
        remaining = header.length - len(got)
        while remaining:
            remaining -= len(sock.recv(remaining))
        return header


def _wait_for_first_byte(sock: Any) -> None:
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except ConnectionError:
        first = b""
    if not first:
        raise _Probe


def prepare(
    sock: Any,
    address: Any,
    *,
    proxy_protocol: bool,
    tls_context: Any,
    timeout: float | None,
    stats: Stats,
    log: Any,
) -> Prepared | None:
    """Read the PROXY header and do the TLS handshake, within ``timeout`` seconds; None
    (the client closed and logged) if it fails."""
    family, kind = sock.family, sock.type
    # gevent's cooperative socket, for the blocking-style steps below.
    sock = gevent.socket.socket(family, kind, 0, fileno=sock.detach())
    try:
        with gevent.Timeout(timeout, HandshakeFailed(f"no handshake within {timeout}s")):
            if proxy_protocol:
                header = read_proxy_header(sock)
                if header.source is not None:
                    address = header.source
            if tls_context is not None:
                _wait_for_first_byte(sock)
                sock = tls_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                sock.do_handshake()
            else:  # back to the plain socket and the fast path
                sock = compat.RawSocket(family, kind, 0, sock.detach())
                sock.setblocking(False)
    except _Probe:
        stats.probes += 1
        log.debug("probe", client=format_peer(address))
        sock.close()
        return None
    except (HandshakeFailed, proxy.ProxyHeaderError, OSError) as exc:
        stats.handshake_failures += 1
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        log.info("handshake_failed", client=format_peer(address), error=reason)
        # Unread input would turn the close into a reset; what is here is garbage anyway.
        with contextlib.suppress(OSError):
            compat.underlying_socket(sock).recv(proxy.MAX_HEADER_BYTES)
        sock.close()
        return None
    return Prepared(sock, address)
