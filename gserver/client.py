"""``python -m gserver.client``: the seed's TCP client (section 2), interactive or one-shot.

Interactive: prints ``Connected to server``, sends each line typed, prints what arrives,
and ``Disconnected`` when the server closes.  ``--send TEXT`` sends one line, prints what
arrives until the server has been quiet for ``--wait`` seconds, and exits 0.

Plain blocking sockets and ``selectors``: a client has one connection and needs no gevent.
At a terminal, prompt_toolkit keeps the line being typed intact while lines arrive; it is
imported only there, so that ``--send`` and piped input start as fast as Python does.
"""

from __future__ import annotations

import argparse
import codecs
import os
import selectors
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gserver.arguments import EXIT_USAGE, OneLineParser

if TYPE_CHECKING:
    import asyncio

    from prompt_toolkit import PromptSession

EXIT_OK, EXIT_CONNECT_FAILED = 0, 1


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


def address(host: str, port: int) -> str:
    """``host:port`` as people write it: an IPv6 address in brackets (``[::1]:8080``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect(host: str, port: int, tls: bool, insecure: bool) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls or insecure:
        import ssl  # only for --tls: it costs a few milliseconds at every start

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


def receive(sock: socket.socket) -> bytes:
    """What the server sent (b"" once it has closed), TLS records already decrypted included.

    A TLS socket may hold decrypted bytes that the kernel no longer reports as readable, so
    they are taken now rather than left until the server happens to send more.
    """
    data = sock.recv(65536)
    pending: Callable[[], int] | None = getattr(sock, "pending", None)
    while data and pending is not None and pending():
        data += sock.recv(pending())
    return data


def end_input(sock: socket.socket) -> None:
    """Half-close: tell the server that no more input comes, and go on reading its replies."""
    # The base class's shutdown: SSLSocket's own drops the TLS state, after which the
    # replies would be read (and printed) still encrypted.
    socket.socket.shutdown(sock, socket.SHUT_WR)


def send_once(sock: socket.socket, text: str, quiet_seconds: float) -> bool:
    """Send one line, print replies until quiet; return True if the server closed."""
    sock.sendall(text.encode("utf-8") + b"\n")
    sock.settimeout(quiet_seconds)
    while True:
        try:
            data = receive(sock)
        except TimeoutError:
            return False
        if not data:
            return True
        _Output.write(data)


def relay(sock: socket.socket, input_fd: int, output: Callable[[bytes], None]) -> None:
    """Relay ``input_fd`` to the server and the server to ``output`` until it closes.

    At the end of input the connection is half-closed and what the server still sends is
    relayed until it closes.
    """
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "server")
    selector.register(input_fd, selectors.EVENT_READ, "input")
    with selector:
        while True:
            for key, _ in selector.select():
                if key.data == "server":
                    data = receive(sock)
                    if not data:
                        return
                    output(data)
                else:
                    typed = os.read(input_fd, 65536)
                    if typed:
                        sock.sendall(typed)
                    else:
                        selector.unregister(input_fd)
                        end_input(sock)


def interact(sock: socket.socket) -> None:
    """Standard input that is not a terminal (a pipe, a file): relayed as it comes."""
    relay(sock, sys.stdin.fileno(), _Output.write)


class _ServerClosed(Exception):
    """Ends the prompt when the server closes while a line is being typed."""


class _Terminal:
    """The interactive client at a terminal, on prompt_toolkit.

    A relay thread owns the socket; typed lines reach it through a pipe, so that its one
    loop does every read and write (a TLS socket is not safe to use from two threads).
    What arrives is handed to the event loop: complete lines print above the input line,
    and an unfinished one (``Enter your username: ``) becomes the prompt itself, so that
    the answer is typed after it as it would be without prompt_toolkit.
    """

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio

        from prompt_toolkit import PromptSession

        self.sock = sock
        self.loop = loop
        self.session: PromptSession[str] = PromptSession()
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.partial = ""  # received after the last newline: shown as the prompt
        self.shown = ""  # the prompt as last drawn
        self.unprinted: list[str] = []  # complete lines waiting to print above the prompt
        self.prompting = False
        self.closed = asyncio.Event()
        self.error: OSError | None = None
        self.at_line_start = True
        self.typed_in, self.typed_out = os.pipe()

    # -- the relay thread ---------------------------------------------------------------

    def run_relay(self) -> None:
        try:
            relay(self.sock, self.typed_in, self._hand_over)
        except OSError as exc:
            self.loop.call_soon_threadsafe(self._server_closed, exc)
        else:
            self.loop.call_soon_threadsafe(self._server_closed, None)

    def _hand_over(self, data: bytes) -> None:
        self.loop.call_soon_threadsafe(self._received, data)

    # -- the event loop -----------------------------------------------------------------

    def _write(self, text: str) -> None:
        # prompt_toolkit's output shows ESC as "?": a server cannot move the cursor or
        # recolour the terminal under the line being typed.
        output = self.session.app.output
        output.write(text)
        output.flush()

    def _received(self, data: bytes) -> None:
        text = self.partial + self.decoder.decode(data)
        if not self.prompting:  # after Ctrl-D there is no input line: print as it comes
            self.partial = ""
            if text:
                self._write(text)
                self.at_line_start = text.endswith("\n")
            return
        complete, newline, self.partial = text.rpartition("\n")
        if newline:
            if not self.unprinted:
                # Printed in the event loop's order, so before the prompt ends if the
                # server closes right after (patch_stdout's thread could print it after).
                import asyncio

                from prompt_toolkit.application import run_in_terminal

                printed = asyncio.ensure_future(run_in_terminal(self._print_unprinted))
                printed.add_done_callback(lambda _: self._end_prompt_if_closed())
            self.unprinted.append(complete + "\n")
        self.session.app.invalidate()  # redraw the prompt: self.partial may be new

    def _message(self) -> str:
        self.shown = self.partial
        return self.partial

    def _print_unprinted(self) -> None:
        text, self.unprinted = "".join(self.unprinted), []
        self._write(text)

    def _server_closed(self, error: OSError | None) -> None:
        self.error = error
        self.closed.set()
        self._end_prompt_if_closed()

    def _end_prompt_if_closed(self) -> None:
        app = self.session.app
        if not self.closed.is_set() or self.unprinted:
            return  # (lines still to print end the prompt once they are printed)
        if app.is_running and app.future is not None and not app.future.done():
            # An empty prompt line is taken away; typed text stays, as it was not sent.
            app.erase_when_done = not (self.partial or app.current_buffer.text)
            app.exit(exception=_ServerClosed())

    def _send(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.typed_out, data) :]

    async def run(self) -> None:
        from prompt_toolkit.patch_stdout import patch_stdout

        threading.Thread(target=self.run_relay, name="relay", daemon=True).start()
        # Anything else printed while the prompt is up (a warning) also goes above it.
        with patch_stdout():
            while not self.closed.is_set():
                self.prompting = True
                line: str | None
                try:
                    # pre_run: the server may have closed before this prompt was running.
                    line = await self.session.prompt_async(
                        self._message, pre_run=self._end_prompt_if_closed
                    )
                except _ServerClosed:
                    break
                except EOFError:  # Ctrl-D
                    line = None
                finally:
                    self.prompting = False
                    # The prompt's last line on screen shows the unfinished line already;
                    # what came after it was drawn is for the next prompt.
                    self.partial = self.partial.removeprefix(self.shown)
                    self.shown = ""
                if line is None:  # no more input: half-close, but the server may say more
                    os.close(self.typed_out)
                    await self.closed.wait()
                    break
                self._send(line)
        if self.error is not None:
            raise self.error


def interact_terminal(sock: socket.socket) -> None:
    """Standard input and output are a terminal: type lines while others arrive."""
    import asyncio

    async def main() -> None:
        terminal = _Terminal(sock, asyncio.get_running_loop())
        await terminal.run()
        _Output.at_line_start = terminal.at_line_start

    asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wait < 0:
        print("gserver.client: error: --wait must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    host = args.host.removeprefix("[").removesuffix("]")  # [::1] as well as ::1
    try:
        sock = connect(host, args.port, args.tls, args.tls_insecure)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"Error: cannot connect to {address(host, args.port)}: {reason}", file=sys.stderr)
        return EXIT_CONNECT_FAILED
    _Output.line("Connected to server")
    try:
        with sock:
            closed = True
            if args.send is not None:
                closed = send_once(sock, args.send, args.wait)
            elif sys.stdin.isatty() and sys.stdout.isatty():
                interact_terminal(sock)
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
