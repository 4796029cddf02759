"""The PROXY protocol header (v1 text and v2 binary) that load balancers put before a
client's stream, so that the server sees the real client address.

Sans-IO: :func:`parse` looks at the bytes received so far and says whether the header is
complete, what it carries, and how many bytes it took.
See https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_BYTES = 107
MAX_HEADER_BYTES = 16 + 65535


class ProxyHeaderError(ValueError):
    """The client's first bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    """A complete header: the original client (None for LOCAL/UNKNOWN) and its size."""

    source: tuple[str, int] | None
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or None if more bytes are needed."""
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    if not data:
        return None
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not b"PROXY "[: len(data)] == data[:6]:
        raise ProxyHeaderError("no PROXY protocol header")
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError("PROXY v1 header too long")
        return None
    fields = data[:end].decode("ascii", "replace").split(" ")
    length = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, length)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 header")
    try:
        address = ipaddress.ip_address(fields[2])
        port = int(fields[4])
    except ValueError:
        raise ProxyHeaderError("malformed PROXY v1 address") from None
    if not 0 <= port <= 65535 or (address.version == 4) != (fields[1] == "TCP4"):
        raise ProxyHeaderError("malformed PROXY v1 address")
    return ProxyHeader((str(address), port), length)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        if V2_SIGNATURE[: len(data)] != data[: len(V2_SIGNATURE)]:
            raise ProxyHeaderError("no PROXY protocol header")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol header")
    version_command, family, size = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyHeaderError("unsupported PROXY v2 version or command")
    length = 16 + size
    if len(data) < length:
        return None
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own health check
        return ProxyHeader(None, length)
    body = data[16:length]
    if family >> 4 == 1 and size >= 12:
        source = str(ipaddress.IPv4Address(body[0:4]))
        (port,) = struct.unpack("!H", body[8:10])
    elif family >> 4 == 2 and size >= 36:
        source = str(ipaddress.IPv6Address(body[0:16]))
        (port,) = struct.unpack("!H", body[32:34])
    else:  # AF_UNSPEC or AF_UNIX: keep the connection's own address
        return ProxyHeader(None, length)
    return ProxyHeader((source, port), length)
