"""``python -m gserver.client``: the seed's TCP client (section 2), interactive or one-shot.

Interactive: prints ``Connected to server``, sends each line typed, prints what arrives,
and ``Disconnected`` when the server closes.  ``--send TEXT`` sends one line, prints what
arrives until the server has been quiet for ``--wait`` seconds, and exits 0.

Plain blocking sockets and ``selectors``: a client has one connection and needs no gevent.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import ssl
import sys
from collections.abc import Sequence

from gserver.arguments import OneLineParser

EXIT_OK, EXIT_CONNECT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="gserver.client", description="Talk to a gserver (or any line server)."
    )
    parser.add_argument("--host", default="localhost", help="server host (default: localhost)")
    parser.add_argument("--port", type=int, default=8080, help="server port (default: 8080)")
    parser.add_argument(
        "--send", metavar="TEXT", help="send TEXT as one line, print the replies, exit"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --send: exit once the server has been quiet this long (default: 1)",
    )
    parser.add_argument("--tls", action="store_true", help="connect over TLS, verifying the server")
    parser.add_argument(
        "--tls-insecure",
        action="store_true",
        help="connect over TLS without verifying the certificate (self-signed test servers)",
    )
    return parser


def connect(host: str, port: int, tls: bool, insecure: bool) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls or insecure:
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=host)
    sock.settimeout(None)
    return sock


class _Output:
    """Standard output, remembering whether the last thing printed ended a line."""

    at_line_start = True

    @classmethod
    def write(cls, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        cls.at_line_start = data.endswith(b"\n")

    @classmethod
    def line(cls, text: str) -> None:
        cls.write(("" if cls.at_line_start else "\n").encode() + text.encode() + b"\n")


def send_once(sock: socket.socket, text: str, quiet_seconds: float) -> bool:
    """Send one line, print replies until quiet; return True if the server closed."""
    sock.sendall(text.encode("utf-8") + b"\n")
    sock.settimeout(quiet_seconds)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            return True
        _Output.write(data)


def interact(sock: socket.socket) -> None:
    """Relay standard input to the server and the server to standard output until it closes."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "server")
    stdin_fd = sys.stdin.fileno()
    selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
    while True:
        for key, _ in selector.select():
            if key.data == "server":
                data = sock.recv(65536)
                if not data:
                    return
                _Output.write(data)
            else:
                typed = os.read(stdin_fd, 65536)
                if typed:
                    sock.sendall(typed)
                else:
                    # End of input: say so, and keep printing what the server still sends.
                    selector.unregister(stdin_fd)
                    sock.shutdown(socket.SHUT_WR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wait < 0:
        print("gserver.client: error: --wait must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = connect(args.host, args.port, args.tls, args.tls_insecure)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"Error: cannot connect to {args.host}:{args.port}: {reason}", file=sys.stderr)
        return EXIT_CONNECT_FAILED
    _Output.line("Connected to server")
    try:
        with sock:
            closed = True
            if args.send is not None:
                closed = send_once(sock, args.send, args.wait)
            else:
                interact(sock)
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:
        _Output.line("Disconnected")
        print(f"Error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONNECT_FAILED
    if closed:
        _Output.line("Disconnected")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
