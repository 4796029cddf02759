"""``python -m gserver``: flags -> Settings -> run.  Exit status 0 after a graceful stop,
1 when the server cannot start (port in use) or is forced down, 2 for a bad setting."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gserver import __version__
from gserver.arguments import OneLineParser
from gserver.settings import (
    DEFAULT_CONFIG,
    FIELDS,
    Settings,
    SettingsError,
    environment_warnings,
    load,
    setting_help,
    setting_metavar,
    setting_type,
)

# The server's parts are imported once the settings are known (and the standard library
# is patched, where they need it): see main().
if TYPE_CHECKING:
    from gserver.modes import Mode
    from gserver.server import Companion, Server

EXIT_OK, EXIT_START_FAILED, EXIT_BAD_SETTING = 0, 1, 2


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, sized to the terminal as ``shutil.get_terminal_size`` would size it, but
    without importing shutil (and its archive modules): argparse makes a formatter for
    every flag added, help or not, and that import is a noticeable part of start-up."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def needs_monkey_patching(settings: Settings) -> bool:
    """Whether anything in force may call the standard library's blocking sockets, locks
    or sleeps, which gevent's monkey-patching makes cooperative: a handler of your own
    (it may use any library), the Redis backplane (redis-py), the metrics or web port,
    workers.  The built-in modes, TLS and PROXY use gevent's own calls, and need none
    of it; patching costs a tenth of a second of start-up (gevent's plugin lookup)."""
    return bool(
        settings.handler
        or settings.backplane
        or settings.metrics_port is not None
        or settings.web_port is not None
        or settings.workers > 1
        or settings.reload
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="gserver",
        formatter_class=HelpFormatter,
        description="A line-based TCP server on gevent: basic, echo, chat and inspect modes.",
        epilog=(
            "Every setting can also be given in the TOML file (key = setting name) or as an "
            "environment variable GSERVER_<SETTING> (PORT too, as Procfile platforms set it). "
            "Precedence: defaults < file < environment < flags."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML settings file (default: {DEFAULT_CONFIG}, read only where it exists)",
    )
    parser.add_argument("--version", action="version", version=f"gserver {__version__}")
    for name, spec in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = spec.default
        help_text = setting_help(name) + ("" if default is None else f" (default: {default})")
        if setting_type(name) is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                dest=name,
                metavar=setting_metavar(name),
                default=argparse.SUPPRESS,
                help=help_text,
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["hash-password"]:
        return hash_password_command(argv[1:])
    args = build_parser().parse_args(argv)
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in FIELDS}
    # A misspelt GSERVER_* variable would be ignored in silence: say so, and start anyway.
    for warning in environment_warnings(os.environ):
        print(f"gserver: warning: {warning}", file=sys.stderr)
    try:
        settings = load(flags, os.environ, Path(args.config) if args.config else None)
        if needs_monkey_patching(settings):
            from gevent import monkey

            monkey.patch_all()
        from gserver.listener import StartError
        from gserver.logs import configure
        from gserver.modes import resolve

        mode = resolve(settings)
        configure(settings.log_format, settings.log_level)
        # Built here even with workers, so that bad TLS files stop the start at once.
        server = compose(settings, mode)
    except SettingsError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    if settings.reload:
        from gserver.reload import supervise  # watchfiles only when asked for

        return supervise(settings, sys.argv[1:] if argv is None else list(argv))
    if settings.workers > 1:
        return run_workers(settings, mode)
    server.install_signal_handlers()
    try:
        server.start()
    except StartError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return finish(server, server.serve_forever())


def compose(settings: Settings, mode: Mode, worker_index: int | None = None) -> Server:
    """The one place that knows every part: the mode's handler, the cluster link, the
    metrics port, and the server that runs them.  Nothing here touches the network."""
    from gserver.logs import get_logger
    from gserver.server import Server

    log = get_logger() if worker_index is None else get_logger(worker=worker_index, pid=os.getpid())
    link = None
    if settings.backplane:
        from gserver.backplane import Backplane  # imported only when a backplane is set

        link = Backplane(settings.backplane, settings.backplane_prefix, log)
    companions: list[Companion] = []
    if settings.metrics_port is not None:
        from gserver.metrics import MetricsPort  # prometheus_client only when asked for

        idle = settings.handshake_timeout or None  # what bounds an HTTP request here too
        port = MetricsPort(settings.metrics_host, settings.metrics_port, log, idle)
        companions.append(port)
    front = None
    if settings.web_port is not None:
        from gserver.web.transport import WebFront  # h11 and wsproto only when asked for

        shared = settings.web_port == settings.port
        web = WebFront(settings, log, own_listener=not shared)
        companions.append(web)
        front = web if shared else None
    return Server(
        mode.handler,
        settings,
        mode.on_start,
        front=front,
        worker_index=worker_index or 0,
        link=link,
        companions=companions,
        log=log,
    )


def finish(server: Server, status: int) -> int:
    """The process's exit after a graceful stop.  A handler that caught its kill and goes
    on must not keep the process alive (or print at interpreter exit): leave at once."""
    if server.connections:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def run_workers(settings: Settings, mode: Mode) -> int:
    """The master of ``--workers N``: one shared socket, N worker processes."""
    from gserver.listener import StartError
    from gserver.logs import configure
    from gserver.workers import Master

    def run_worker(index: int, listener: socket.socket) -> int:
        configure(settings.log_format, settings.log_level)
        server = compose(settings, mode, worker_index=index)
        server.install_signal_handlers()
        try:
            server.start(listener)
        except StartError as exc:
            print(f"gserver: error: worker {index}: {exc}", file=sys.stderr)
            return EXIT_START_FAILED
        return finish(server, server.serve_forever())

    try:
        return Master(settings, run_worker).run()
    except StartError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED


def hash_password_command(argv: Sequence[str]) -> int:
    """``python -m gserver hash-password``: read a password without echoing it (one line of
    standard input when that is no terminal, for scripts) and print its hash alone on
    standard output, for the ``oper_password`` setting.  Prompts go to standard error."""
    import getpass

    from gserver.protocol.passwords import hash_password

    if argv:
        print(
            "gserver hash-password: error: takes no arguments (it reads the password)",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTING
    try:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ", stream=sys.stderr)
            if getpass.getpass("Again: ", stream=sys.stderr) != password:
                print("gserver hash-password: error: the two passwords differ", file=sys.stderr)
                return EXIT_BAD_SETTING
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    except (EOFError, KeyboardInterrupt):
        print("", file=sys.stderr)
        return EXIT_BAD_SETTING
    if not password:
        print("gserver hash-password: error: the password is empty", file=sys.stderr)
        return EXIT_BAD_SETTING
    print(hash_password(password))
    return EXIT_OK
